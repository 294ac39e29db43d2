"""One batch of the batch path: everything its records produced, stored before they commit.

Handlers append to a :class:`Batch` while they prepare it (CPU only, no I/O); the pipeline
then stores it (ClickHouse first, then the outgoing messages) and only afterwards commits the
offsets it covers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import TopicPartition

from schemas.dead_letter import DeadLetter
from streams.dead_letter import InvalidMessage
from streams.publisher import Outgoing
from streams.rules import RaisedAlert

log = logging.getLogger("feedgrid.streams.batch")
Message = TypeVar("Message")


@dataclass
class Batch:
    access_columns: dict[str, list[Any]] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[RaisedAlert] = field(default_factory=list)
    grant_states: list[dict[str, Any]] = field(default_factory=list)
    feed_status: list[dict[str, Any]] = field(default_factory=list)
    feed_metadata: list[dict[str, Any]] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    # Next offset to commit per partition, and events taken per handler.
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    rejected: int = 0

    def dead_letter(self, topic: str, record: Any, reason: str) -> None:
        log.warning("rejected %s[%s]@%s: %s", record.topic, record.partition, record.offset, reason)
        key = record.key if isinstance(record.key, bytes) else None
        self.outgoing.append(
            Outgoing(topic, key, DeadLetter.from_message(record, reason).to_bytes())
        )
        self.rejected += 1

    def decoded(
        self,
        records: Sequence[Any],
        decode: Callable[[Any], Message],
        dead_letter_topic: str,
    ) -> Iterator[tuple[Any, Message]]:
        """Each record with its decoded message, in order; a record whose message does not
        decode (:class:`InvalidMessage`) goes to ``dead_letter_topic`` with its reason."""
        for record in records:
            try:
                message = decode(record.value)
            except InvalidMessage as error:
                self.dead_letter(dead_letter_topic, record, error.reason)
                continue
            yield record, message

    @property
    def events(self) -> int:
        return sum(self.counts.values())


def alert_messages(topic: str, alerts: Sequence[RaisedAlert]) -> list[Outgoing]:
    """Alerts as messages for the alerts topic, keyed by requester (or feed)."""
    return [
        Outgoing(topic, alert.key.encode() or None, alert.to_cloud_event().to_bytes())
        for alert in alerts
    ]
