"""The outbox relay: publishes committed events to Kafka in commit order, then marks them sent.

Kafka being down never fails an API call: rows wait here and the relay retries with backoff.
A row that cannot be read (a damaged bundle) is set aside instead: its dead-letter record goes
to the dead-letter topic in its place, and the rows after it are published.
Delivery is at least once (a crash between publish and mark re-sends a batch); consumers
deduplicate on the CloudEvents id. On PostgreSQL only the replica holding an advisory lock
relays, so two API replicas never interleave their publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge
from sqlalchemy import Row, case, delete, func, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from infra.kafka_batches import (
    COMPRESSION,
    Delivery,
    abandon,
    delivered,
    send_partitioned,
)
from infra.kafka_producer import stop_producer
from registry_api.driver_work import DriverCalls, DriverWork, commit_in_turn, update_statement
from registry_api.outbox.models import OutboxMessage
from registry_api.outbox.service import OUTBOX_TABLE, row_messages
from schemas.dead_letter import DeadLetter
from schemas.events import utcnow
from schemas.settings import Settings
from schemas.topics import DEAD_LETTER, topic_name

log = logging.getLogger("feedgrid.relay")

RELAYED = Counter("feedgrid_outbox_relayed_total", "Outbox events published to Kafka")
LAST_PUBLISHED = Gauge("feedgrid_outbox_last_published_id", "Highest outbox id published to Kafka")
RELAY_ERRORS = Counter("feedgrid_outbox_errors_total", "Failed attempts to publish outbox events")
BACKLOG = Gauge(
    "feedgrid_outbox_backlog_messages",
    "Outbox messages committed and not yet published to Kafka, counted when /metrics is read",
)
SET_ASIDE = Counter(
    "feedgrid_outbox_set_aside_total",
    "Outbox rows the relay could not read, sent to the dead-letter topic in their place",
)

RELAY_LOCK_KEY = 0x0FEED6D1
PURGE_EVERY_SECONDS = 300.0
# Published rows are marked sent together: at most this long after their publication, at
# most this many at once, and always before the relay idles or stops (see _mark_published).
MARK_EVERY_SECONDS = 0.25
MARK_AT_MOST_IDS = 5_000
# stop() lets a batch being published finish (and be marked) for at most this long
STOP_GRACE_SECONDS = 5.0


# id, topic suffix, key, messages, payload, codec
OutboxRow = tuple[int, str, str, int, bytes, str | None]


def _first_messages(waiting: Sequence[Row[Any]], limit: int) -> list[Row[Any]]:
    """The first rows that hold at most ``limit`` messages in all (at least one row)."""
    total = 0
    for taken, row in enumerate(waiting):
        total += row[3]
        if taken and total > limit:
            return list(waiting[:taken])
    return list(waiting)


# Ids per UPDATE: within the 999 variables a statement may bind on the oldest SQLite builds.
IDS_PER_STATEMENT = 900


def _marking_sent(ids: Sequence[int], now: datetime, dialect: Dialect) -> DriverWork[None]:
    """The published rows marked sent. Exactly the ids published: on PostgreSQL a lower id can
    commit later than a higher one, so an id range could mark a row that was never read."""
    statements = [
        update_statement(
            OUTBOX_TABLE,
            {"sent_at": now},
            dialect,
            where={},
            within=("id", ids[begin : begin + IDS_PER_STATEMENT]),
        )
        for begin in range(0, len(ids), IDS_PER_STATEMENT)
    ]

    def work(calls: DriverCalls) -> None:
        for statement in statements:
            calls.execute(statement)

    return work


def _dead_letter(
    topic: str, row_id: int, key: str, payload: bytes, reason: str
) -> tuple[bytes | None, bytes]:
    """The dead-letter message of a row that cannot be read: no retry would read it, and
    retrying it would hold back every row after it."""
    record = DeadLetter.from_outbox_row(topic, row_id, key, payload, f"unreadable: {reason}")
    return key.encode(), record.to_bytes()


class OutboxRelay:
    def __init__(
        self, settings: Settings, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._lock_connection: AsyncConnection | None = None
        self.is_leader = False
        self._last_purge = 0.0
        # ids published, not yet marked sent, with how many messages each row holds
        self._published: dict[int, int] = {}
        self._first_unmarked_at = 0.0

    def notify(self) -> None:
        """Called after a commit that added outbox rows, so delivery does not wait for a poll."""
        self._wakeup.set()

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            # A batch on its way to Kafka finishes first: cancelled between its delivery and
            # its marking, it would be published again by whoever relays next.
            self._stopping.set()
            self._wakeup.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE_SECONDS):
                    await asyncio.shield(self._task)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # before the lock goes: a standby taking over must not publish these again
        await self._mark_published_or_forget()
        await self._close_producer()
        await self._release_leadership()

    async def _release_leadership(self) -> None:
        # The lock belongs to the database session: drop the connection rather than return it
        # to the pool, or a pooled session would keep holding it.
        connection, self._lock_connection = self._lock_connection, None
        self.is_leader = False
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                if not await self._hold_leadership():
                    await self._pause(2.0)
                    continue
                published = await self.publish_pending()
                backoff = 0.5
                if published == 0:
                    if self._published and self._mark_wait() <= 0:
                        await self._mark_published()
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                RELAY_ERRORS.inc()
                log.warning("outbox relay cannot publish yet: %s", error)
                await self._close_producer()
                if not self.settings.is_sqlite:
                    await self._mark_published_or_forget()
                    await self._release_leadership()
                await self._pause(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _pause(self, seconds: float) -> None:
        """Sleeps, unless the relay is stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _idle(self) -> None:
        """Waits for a commit's notice, the idle poll, or the published rows' marking."""
        if self._stopping.is_set():
            return
        self._wakeup.clear()
        wait = self.settings.relay_idle_seconds
        if self._published:
            wait = max(0.0, min(wait, self._mark_wait()))
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event fires, and stop() would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wakeup.wait()

    def _mark_wait(self) -> float:
        """Seconds until the published rows are due to be marked sent."""
        return self._first_unmarked_at + MARK_EVERY_SECONDS - time.monotonic()

    async def _hold_leadership(self) -> bool:
        if self.settings.is_sqlite:
            self.is_leader = True
            return True
        if self._lock_connection is None:
            self._lock_connection = await self.engine.connect()
            self.is_leader = False
        if not self.is_leader:
            result = await self._lock_connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LOCK_KEY}
            )
            self.is_leader = bool(result.scalar())
            await self._lock_connection.commit()
        return self.is_leader

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                enable_idempotence=True,
                acks="all",
                linger_ms=5,
                compression_type=COMPRESSION,
                max_batch_size=1024 * 1024,
                request_timeout_ms=15_000,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        """Batches the broker has not taken are given up after a while: their rows are not
        marked sent, so they are published again (at least once)."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await stop_producer(producer)

    async def publish_pending(self) -> int:
        """Publishes one batch of unsent rows in id order: rows up to ``relay_batch_size``
        messages (at least one row, whatever it holds). Returns how many messages."""
        async with self.sessions() as session:
            # A single message's payload comes with the first read; a bundle's (up to a MiB)
            # only once it is known to fit this batch.
            # rows published but not marked yet come back with the unsent ones: skipped here
            waiting = [
                row
                for row in await session.execute(
                    select(
                        OutboxMessage.id,
                        OutboxMessage.topic,
                        OutboxMessage.key,
                        OutboxMessage.messages,
                        case((OutboxMessage.messages == 1, OutboxMessage.payload)),
                    )
                    .where(OutboxMessage.sent_at.is_(None))
                    .order_by(OutboxMessage.id)
                    .limit(self.settings.relay_batch_size + len(self._published))
                )
                if row[0] not in self._published
            ]
            if not waiting:
                return 0
            chosen = _first_messages(waiting, self.settings.relay_batch_size)
            bundles = [row[0] for row in chosen if row[3] > 1]
            payloads: dict[int, tuple[bytes, str | None]] = {}
            if bundles:
                read = await session.execute(
                    select(OutboxMessage.id, OutboxMessage.payload, OutboxMessage.codec).where(
                        OutboxMessage.id.in_(bundles)
                    )
                )
                payloads = {row_id: (payload, codec) for row_id, payload, codec in read}
            rows: list[OutboxRow] = [
                (row_id, topic, key, messages, *payloads[row_id])
                if messages > 1
                else (row_id, topic, key, messages, payload, None)
                for row_id, topic, key, messages, payload in chosen
            ]
            ids = [row[0] for row in rows]
            producer = await self._ensure_producer()
            published = await self._publish(producer, rows)
        if not self._published:
            self._first_unmarked_at = time.monotonic()
        self._published.update((row[0], row[3]) for row in rows)
        RELAYED.inc(published)
        LAST_PUBLISHED.set(ids[-1])
        if len(self._published) >= MARK_AT_MOST_IDS or self._mark_wait() <= 0:
            await self._mark_published()
        if time.monotonic() - self._last_purge > PURGE_EVERY_SECONDS:
            await self.purge_sent()
        return published

    async def _mark_published(self) -> None:
        """Marks the published rows sent, in one write for all the batches published since the
        last. On SQLite every write takes the process's write turn (an access request meeting
        it in SQLite's busy handler would sleep there instead); marking each batch as it went
        out took the turn once per batch, about a third of the turn's time with eight access
        requests at once.

        Until they are marked, the rows are skipped by the next reads (``_published``); a
        crash in between publishes them again (delivery is at least once)."""
        if not self._published:
            return
        ids = sorted(self._published)
        async with self.sessions() as session:
            # One call on the connection's thread, the UPDATE and the commit (driver_work).
            await commit_in_turn(
                session, "outbox_relay", _marking_sent(ids, utcnow(), session.get_bind().dialect)
            )
        self._published = {}

    async def _mark_published_or_forget(self) -> None:
        """On stopping or losing leadership: marks what was published if the database lets it,
        else forgets it (its rows will be published again: at least once)."""
        try:
            await self._mark_published()
        except Exception as error:
            log.warning("outbox relay could not mark %d published rows sent: %s",
                        len(self._published), error)  # fmt: skip
        self._published = {}

    async def _publish(self, producer: AIOKafkaProducer, rows: Sequence[OutboxRow]) -> int:
        """The rows' messages as record batches, one per topic partition at a time, each
        handed over whole (``infra.kafka_batches``): the producer's per-message path (a
        future, a partitioner call and an accumulator lookup each) cost more than everything
        else the relay does. A key goes to the partition the default partitioner gives it,
        whichever way it was published. Returns how many messages."""
        if any(row[5] is not None for row in rows):
            # decompressed in a worker thread: a compressor gives up the GIL, and on the event
            # loop taking it back waited up to 5 ms per bundle beside a busy thread
            by_topic, set_aside = await asyncio.to_thread(self._messages, rows)
        else:
            by_topic, set_aside = self._messages(rows)
        deliveries: list[Delivery] = []
        try:
            for topic, messages in by_topic.items():
                deliveries += await send_partitioned(producer, topic, messages)
        except BaseException:
            abandon(deliveries)
            raise
        await delivered(deliveries)
        # told once the dead letters are delivered (a failed round tries them again)
        for row_id, topic, reason in set_aside:
            SET_ASIDE.inc()
            log.error("outbox row %d (%s) set aside on the dead-letter topic: %s",
                      row_id, topic, reason)  # fmt: skip
        return sum(len(messages) for messages in by_topic.values())

    def _messages(
        self, rows: Sequence[OutboxRow]
    ) -> tuple[dict[str, list[tuple[bytes | None, bytes]]], list[tuple[int, str, str]]]:
        """The rows' messages by topic, and the rows set aside (id, topic, reason): a row that
        cannot be read is replaced by its dead-letter message."""
        by_topic: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)
        set_aside: list[tuple[int, str, str]] = []
        for row_id, suffix, row_key, count, payload, codec in rows:
            topic = topic_name(self.settings.topic_prefix, suffix)
            try:
                by_topic[topic] += list(row_messages(row_key, payload, count, codec))
            except ValueError as error:
                by_topic[topic_name(self.settings.topic_prefix, DEAD_LETTER)].append(
                    _dead_letter(topic, row_id, row_key, payload, str(error))
                )
                set_aside.append((row_id, topic, str(error)))
        return by_topic, set_aside

    async def purge_sent(self) -> None:
        """Sent rows are kept a while for inspection (outbox_retention_hours), then removed."""
        cutoff = utcnow() - timedelta(hours=self.settings.outbox_retention_hours)
        async with self.sessions() as session:
            await session.execute(delete(OutboxMessage).where(OutboxMessage.sent_at < cutoff))
            await session.commit()
        self._last_purge = time.monotonic()

    async def backlog(self) -> int:
        """Messages waiting to be published: those of the unsent rows but the ones this relay
        has published and not yet marked sent. (Counted while a marking commits, the rows it
        marks could be subtracted twice: never below zero.)"""
        async with self.sessions() as session:
            unsent = await session.scalar(
                select(func.sum(OutboxMessage.messages)).where(OutboxMessage.sent_at.is_(None))
            )
        return max(0, int(unsent or 0) - sum(self._published.values()))
