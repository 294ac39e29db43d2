"""Producing the workers' own messages: alerts, dead letters, liveness, re-keyed records.

The workers publish before they commit their input and wait for the broker's answer, so a
crash can repeat a message but never lose one; consumers deduplicate on the CloudEvents id.

An error that retrying cannot cure (a message over the broker's size limit, an invalid topic)
is never retried: that message is set aside with its reason (logged, counted in
``feedgrid_stream_publish_set_aside_total``) and the rest go on. Before this rule one message
of 3.4 MB was retried forever and stopped every department's analytics. Messages are checked
against the producer's ``max_request_size`` before they are sent, so the common case never
reaches the broker at all. Retriable errors (broker down, leader moving) back off and retry
the messages that failed, and only those.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from prometheus_client import Counter

from infra.kafka_batches import COMPRESSION, send_partitioned
from infra.kafka_producer import stop_producer

log = logging.getLogger("feedgrid.streams.publisher")

PUBLISHED = Counter(
    "feedgrid_stream_published_total", "Messages produced by the workers", ["topic"]
)
PUBLISH_ERRORS = Counter(
    "feedgrid_stream_publish_errors_total", "Failed produce attempts that are retried"
)
SET_ASIDE = Counter(
    "feedgrid_stream_publish_set_aside_total",
    "Messages not published because no retry could succeed (too large, invalid)",
    ["topic", "reason"],
)

# What the broker answers for a message that no retry can get through. (aiokafka marks some
# curable errors not retriable too, a timeout while the broker is away among them: those are
# retried like the rest.)
PERMANENT_ERRORS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    InvalidMessageError,
    InvalidTimestampError,
    CorruptRecordException,
)

# The broker's default message.max.bytes and the producer's default max_request_size.
MAX_MESSAGE_BYTES = 1_048_576
# Room for the record batch header, the key and the headers around a value.
_ENVELOPE_BYTES = 1_024


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key or b"")


def fits(size: int, limit: int = MAX_MESSAGE_BYTES) -> bool:
    return size + _ENVELOPE_BYTES <= limit


class Publisher:
    """One idempotent producer per worker process, shared by every handler and agent."""

    def __init__(self, bootstrap: str, retry_max_seconds: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.retry_max_seconds = retry_max_seconds
        self.max_message_bytes = MAX_MESSAGE_BYTES
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_batch_size=512 * 1024,
                max_request_size=self.max_message_bytes,
                compression_type=COMPRESSION,
                request_timeout_ms=30_000,
            )
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_producer(producer)

    async def publish(self, messages: Sequence[Outgoing]) -> int:
        """Sends every message that can be sent; returns once the broker acknowledged them.

        Returns how many were set aside (never sent) because no retry could succeed.

        Messages go as record batches, one per topic partition (``infra.kafka_batches``):
        a storm of liveness changes is tens of thousands of messages in a batch of the batch
        path. A batch the broker refuses for good is sent again a message at a time, so only
        the message that cannot pass is set aside.
        """
        pending = [message for message in messages if self._sendable(message)]
        set_aside = len(messages) - len(pending)
        alone: list[Outgoing] = []  # from a batch refused for good: each in a batch of its own
        delay = 0.2
        while pending or alone:
            producer = self._producer
            if producer is None:
                raise RuntimeError("the publisher is not started")
            groups = [
                (group, sent, together)
                for messages, together in ((pending, True), (alone, False))
                for group, sent in await self._send(producer, messages, together=together)
            ]
            results = await asyncio.gather(*(sent for _, sent, _ in groups), return_exceptions=True)
            pending, alone = [], []
            last_error: BaseException | None = None
            for (group, _, together), result in zip(groups, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if not isinstance(result, BaseException):
                    for topic, count in Tally(message.topic for message in group).items():
                        PUBLISHED.labels(topic).inc(count)
                elif isinstance(result, PERMANENT_ERRORS) and len(group) > 1:
                    alone += group
                elif isinstance(result, PERMANENT_ERRORS):
                    self._set_aside(group[0], type(result).__name__)
                    set_aside += 1
                else:  # retried as it went: batched, or alone
                    if together:
                        pending += group
                    else:
                        alone += group
                    last_error = result
            if last_error is not None:
                PUBLISH_ERRORS.inc()
                waiting = len(pending) + len(alone)
                log.warning("could not publish %d messages yet: %s", waiting, last_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
        return set_aside

    @staticmethod
    async def _send(
        producer: AIOKafkaProducer, messages: Sequence[Outgoing], *, together: bool
    ) -> list[tuple[list[Outgoing], asyncio.Future[Any]]]:
        """The messages handed to the producer as record batches, per topic (``together``)
        or each in a batch of its own; each delivery with the messages it carries."""
        by_topic: dict[str, list[Outgoing]] = defaultdict(list)
        for message in messages:
            by_topic[message.topic].append(message)
        parts = [
            (topic, part)
            for topic, listed in by_topic.items()
            for part in ([listed] if together else [[message] for message in listed])
        ]
        groups: list[tuple[list[Outgoing], asyncio.Future[Any]]] = []
        for topic, part in parts:
            try:
                sent = await send_partitioned(
                    producer, topic, [(message.key, message.value) for message in part]
                )
            except KafkaError as error:
                groups.append((part, _failed(error)))
                continue
            groups += [([part[position] for position in carried], delivery)
                       for carried, delivery in sent]  # fmt: skip
        return groups

    def _sendable(self, message: Outgoing) -> bool:
        if fits(message.size, self.max_message_bytes):
            return True
        self._set_aside(message, "too_large")
        return False

    def _set_aside(self, message: Outgoing, reason: str) -> None:
        SET_ASIDE.labels(message.topic, reason).inc()
        log.error(
            "message to %s set aside, it can never be published (%s, %d bytes)",
            message.topic,
            reason,
            message.size,
        )


def _failed(error: Exception) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future
