"""Access events, a batch at a time: validate, enrich, keep live state, judge grants, columns.

For each record of a batch: the CloudEvent is validated against ``schemas.events`` (a bad one
goes to the dead-letter topic with its reason), enriched with its feed's owner, kind, region,
industry and sharing class from the worker's feed catalog, applied to the live sessions and
the grant book, and judged by the grant rules. Its row is appended to one list per column of
``access_events``: the sink inserts the batch as one column-oriented block, with no per-row
object on the way. Retrievals are re-keyed by requester for the per-requester rules
(``requester-activity``), in messages of at most ``OPENED_PER_MESSAGE`` records, so no
outgoing message grows with the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from aiokafka.structs import ConsumerRecord

from schemas.events import AccessEventData
from streams.batch import Batch
from streams.catalog import FeedCatalog, FeedFacts
from streams.decoding import AccessCloudEvent, decode_access_event
from streams.grants import GrantBook
from streams.live import LiveSessions, session_key
from streams.publisher import Outgoing
from streams.rules import FeedOpened, check_retrieval, encode_opened

log = logging.getLogger("feedgrid.streams.access")

AGENT_NAME = "access-events"
# ~300 bytes a record: a requester-activity message stays near 150 KB, far under 1 MB.
OPENED_PER_MESSAGE = 500

ACCESS_COLUMNS = (
    "event_id",
    "time",
    "type",
    "source",
    "feed_id",
    "owner_department",
    "requester_department",
    "requester_user",
    "kind",
    "region",
    "industry",
    "sharing_class",
    "request_id",
    "grant_id",
    "token_id",
    "action",
    "purpose",
    "decision",
    "reason",
    "emergency",
    "protocol",
    "media_server",
    "client_ip",
    "bytes",
    "duration_seconds",
    "concurrent_viewers",
    "requested_at",
    "decided_at",
    "grant_valid_from",
    "grant_valid_until",
    "kafka_partition",
    "kafka_offset",
)
_UNKNOWN_FEED = FeedFacts(-1, "", "", "", "", "")

RETRIEVAL_STARTED = "feedgrid.retrieval.started"
RETRIEVAL_ENDED = "feedgrid.retrieval.ended"
GRANT_EVENTS = ("feedgrid.grant.issued", "feedgrid.grant.revoked")
REQUEST_EVENTS = ("feedgrid.access.requested", "feedgrid.access.decided")


def empty_columns() -> dict[str, list[Any]]:
    return {name: [] for name in ACCESS_COLUMNS}


def access_row(
    event: AccessCloudEvent, facts: FeedFacts, viewers: int, partition: int, offset: int
) -> tuple[Any, ...]:
    """One access_events row, in ``ACCESS_COLUMNS`` order."""
    data = event.data
    return (
        event.id,
        event.time,
        event.type.removeprefix("feedgrid."),
        event.source,
        data.feed_id,
        data.owner_department or facts.owner_department,
        data.requester_department or "",
        data.requester_user or "",
        facts.kind,
        facts.region,
        facts.industry,
        facts.sharing_class,
        data.request_id or "",
        data.grant_id or "",
        data.token_id or "",
        data.action or "",
        data.purpose or "",
        data.decision or "",
        data.reason or "",
        data.emergency,
        data.protocol or "",
        data.media_server or "",
        data.client_ip or "",
        data.bytes,
        data.duration_seconds,
        viewers,
        data.requested_at,
        data.decided_at,
        data.grant_valid_from,
        data.grant_valid_until,
        partition,
        offset,
    )


def decision_row(event: AccessCloudEvent, owner_department: str) -> dict[str, Any] | None:
    """The request's state after this event (one row per request and feed; latest wins)."""
    data = event.data
    if not data.request_id:
        return None
    decided = event.type == "feedgrid.access.decided"
    decision = data.decision or ("pending" if not decided else "")
    requested_at: datetime = data.requested_at or event.time
    decided_at = data.decided_at or (event.time if decided and decision != "pending" else None)
    return {
        "request_id": data.request_id,
        "feed_id": data.feed_id,
        # Later events win; at the same millisecond a decision beats the request it answers.
        "version": int(event.time.timestamp() * 1000) * 2 + (1 if decided else 0),
        "event_id": event.id,
        "time": event.time,
        "owner_department": owner_department,
        "requester_department": data.requester_department or "",
        "requester_user": data.requester_user or "",
        "purpose": data.purpose or "",
        "decision": decision,
        "reason": data.reason or "",
        "emergency": data.emergency,
        "requested_at": requested_at,
        "decided_at": decided_at,
    }


def opened_record(event: AccessCloudEvent, owner: str) -> FeedOpened:
    data: AccessEventData = event.data
    return FeedOpened(
        event_id=event.id,
        time=event.time,
        feed_id=data.feed_id,
        owner_department=owner,
        requester_department=data.requester_department or "",
        requester_user=data.requester_user or "",
        token_id=data.token_id or "",
        grant_id=data.grant_id or "",
        client_ip=data.client_ip or "",
    )


def requester_messages(
    topic: str, opened: dict[str, list[FeedOpened]], per_message: int = OPENED_PER_MESSAGE
) -> list[Outgoing]:
    """A requester's retrievals of one batch, in order, in messages of bounded size."""
    messages = []
    for requester, records in opened.items():
        key = requester.encode()
        for start in range(0, len(records), per_message):
            chunk = records[start : start + per_message]
            messages.append(Outgoing(topic, key, encode_opened(chunk)))
    return messages


class AccessEventsHandler:
    name = AGENT_NAME

    def __init__(
        self,
        *,
        catalog: FeedCatalog,
        grants: GrantBook,
        live: LiveSessions,
        requester_topic: str,
        dead_letter_topic: str,
    ) -> None:
        self.catalog = catalog
        self.grants = grants
        self.live = live
        self.requester_topic = requester_topic
        self.dead_letter_topic = dead_letter_topic

    def restore(self, url: str, owns: Callable[[str], bool]) -> int:
        """After an assignment: the grants of the feeds this worker now owns."""
        return self.grants.restore(url, owns)

    def prepare(self, records: Sequence[ConsumerRecord[Any, Any]], batch: Batch) -> None:
        columns = [batch.access_columns[name] for name in ACCESS_COLUMNS]
        appenders = [column.append for column in columns]
        opened: dict[str, list[FeedOpened]] = {}
        for record, event in batch.decoded(records, decode_access_event, self.dead_letter_topic):
            try:
                row = self._process(event, record, batch, opened)
            except Exception as error:  # a bug on one event must not stop the stream
                log.exception("access event at offset %s could not be processed", record.offset)
                batch.dead_letter(self.dead_letter_topic, record, f"processing failed: {error!r}")
                continue
            for append, value in zip(appenders, row, strict=True):
                append(value)
        batch.outgoing += requester_messages(self.requester_topic, opened)
        self.live.report()

    def _process(
        self,
        event: AccessCloudEvent,
        record: ConsumerRecord[Any, Any],
        batch: Batch,
        opened: dict[str, list[FeedOpened]],
    ) -> tuple[Any, ...]:
        data = event.data
        feed_id = data.feed_id
        facts = self.catalog.get(feed_id) or _UNKNOWN_FEED
        owner = data.owner_department or facts.owner_department
        kind = event.type
        if kind == RETRIEVAL_STARTED:
            viewers = self.live.started(feed_id, session_key(data), event.time.timestamp())
            alert = check_retrieval(event.id, event.time, data, owner, self.grants.grants(feed_id))
            if alert is not None:
                batch.alerts.append(alert)
            record_opened = opened_record(event, owner)
            opened.setdefault(record_opened.requester, []).append(record_opened)
        elif kind == RETRIEVAL_ENDED:
            viewers = self.live.ended(feed_id, session_key(data), event.time.timestamp())
        else:
            viewers = self.live.viewers(feed_id)
            if kind in GRANT_EVENTS:
                batch.grant_states += self.grants.apply(kind, data, event.time)
            elif kind in REQUEST_EVENTS:
                decision = decision_row(event, owner)
                if decision is not None:
                    batch.decisions.append(decision)
        return access_row(event, facts, viewers, record.partition, record.offset)
