"""The stream workers' liveness decisions, written to the registry: the one writer of status.

Liveness reports never touch the registry (``heartbeats.py``): the workers read them, keep
each feed's last-seen state, and publish on feed-status (``schemas.events.LivenessData``,
keyed by feed id) what the registry should now say:

* ``liveness.changed`` - the feed went online or offline. Written the way the registry writes
  its own changes: ``status`` set when it differs (never on a retired feed), ``revision``
  bumped (not ``version``: editors' If-Match stays valid), ``last_seen`` moved forward only,
  and a ``feedgrid.feed.status`` event with the full state added to the outbox in the same
  transaction; then this replica's index is told (other replicas follow feed-metadata).
* ``liveness.seen`` - the feed is still what it was and was last seen at ``last_seen``
  (a worker sends it at most once a minute or so per feed): ``last_seen`` moved forward only,
  in one batched UPDATE, with no revision bump and no event.

Every API replica runs one :class:`LivenessApplier` in the consumer group
``{topic_prefix}registry-status``, so each partition is applied by one replica. A fetched
batch is applied in ONE transaction and its offsets are committed only after that commit; a
database error retries the same batch with backoff. Applying a batch twice (a crash between
the two commits, a rebalance) changes nothing, since status is written only when it differs
and ``last_seen`` only moves forward. A message that cannot be read is counted and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError
from prometheus_client import Counter, Gauge
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.foreground import give_way
from registry_api.bulk_insert import DriverInsert
from registry_api.db import writes_in_turn
from registry_api.driver_work import (
    DriverCalls,
    DriverStatement,
    DriverWork,
    commit_in_turn,
    run_driver_work,
)
from registry_api.feeds import sqlite_rows
from registry_api.feeds.documents import event_data
from registry_api.feeds.events import document_outbox_row, outbox_row
from registry_api.feeds.models import feeds_table
from registry_api.feeds.service import load_rows
from registry_api.feeds.spatial import FeedIndex
from registry_api.outbox.service import enqueue_many, prepare_enqueue
from schemas.events import (
    LIVENESS_EVENT_TYPES,
    SCHEMA_LIVENESS_V1,
    EventType,
    LivenessData,
    utcnow,
)
from schemas.settings import Settings
from schemas.times import utc_time
from schemas.topics import FEED_STATUS as FEED_STATUS_TOPIC
from schemas.topics import topic_name

log = logging.getLogger("feedgrid.feeds.liveness")

feeds = feeds_table
GROUP_SUFFIX = "registry-status"
LOOKUP_CHUNK = 1_000
# Messages fetched at once, read per turn of the event loop, feeds per transaction: the
# applier shares the API's loop, and a fetch of 5,000 (the gateways' first round turns tens
# of thousands of feeds online) held it for 0.2-0.7 s at a time, a quarter of it unpacking
# the records (infra/loop_watch's reports, demo city).
FETCH_RECORDS = 1_000
READ_SLICE = 500
APPLY_FEEDS = 250
# Feeds per UPDATE ... FROM (VALUES ...) on SQLite: two variables each, within the 999 a
# statement may bind on the oldest builds.
PAIRS_PER_STATEMENT = 400
MAX_RETRY_SECONDS = 30.0

TRANSITIONS = Counter(
    "feedgrid_liveness_transitions_applied_total",
    "Feed status changes written to the registry from the workers' feed-status events",
)
SEEN_UPDATES = Counter(
    "feedgrid_liveness_seen_applied_total",
    "last_seen updates from feed-status events (each a no-op unless it is newer)",
)
BATCHES = Counter("feedgrid_liveness_batches_total", "Feed-status batches applied to the registry")
UNREADABLE = Counter(
    "feedgrid_liveness_unreadable_total",
    "Feed-status messages that could not be read (skipped; the consumer goes on)",
)
APPLY_ERRORS = Counter(
    "feedgrid_liveness_apply_errors_total",
    "Failed attempts to write a feed-status batch to the registry (the batch is retried)",
)
LAG_MESSAGES = Gauge(
    "feedgrid_liveness_lag_messages",
    "Feed-status messages not yet applied, on the partitions this replica holds",
)
LAG_SECONDS = Gauge(
    "feedgrid_liveness_lag_seconds", "Age of the newest feed-status event this replica applied"
)


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Liveness:
    """One readable feed-status event."""

    feed_id: str
    changed: bool
    status: str
    last_seen: datetime | None


def read_liveness(value: bytes | None) -> Liveness | None:
    """The event in ``value``, or None when it is not a liveness event this version reads."""
    if not value:
        return None
    try:
        envelope = orjson.loads(value)
        if envelope["type"] not in LIVENESS_EVENT_TYPES:
            return None
        if envelope.get("dataschema", SCHEMA_LIVENESS_V1) != SCHEMA_LIVENESS_V1:
            return None
        data = LivenessData.model_validate(envelope["data"])
        # naive times are UTC; a time outside 1970..9000 is refused like the API refuses it
        last_seen = utc_time(data.last_seen) if data.last_seen is not None else None
    except Exception:  # whatever is wrong with it, it must not stop the consumer
        return None
    return Liveness(
        feed_id=data.feed_id,
        changed=envelope["type"] == EventType.LIVENESS_CHANGED,
        status=data.status,
        last_seen=last_seen,
    )


@dataclass
class LivenessBatch:
    """What a batch of events asks of the registry, folded per feed in topic order."""

    statuses: dict[str, str] = field(default_factory=dict)  # the last transition of a feed
    seen: dict[str, datetime] = field(default_factory=dict)  # its newest last_seen

    def add(self, event: Liveness) -> None:
        if event.changed:
            self.statuses[event.feed_id] = event.status
        if event.last_seen is not None:
            known = self.seen.get(event.feed_id)
            if known is None or known < event.last_seen:
                self.seen[event.feed_id] = event.last_seen

    def parts(self, feeds_per_part: int) -> list[LivenessBatch]:
        """The batch split by feed: each feed's folded status and last_seen in one part."""
        ids = list(dict.fromkeys([*self.statuses, *self.seen]))
        return [
            LivenessBatch(
                statuses={i: self.statuses[i] for i in chunk if i in self.statuses},
                seen={i: self.seen[i] for i in chunk if i in self.seen},
            )
            for chunk in (
                ids[begin : begin + feeds_per_part] for begin in range(0, len(ids), feeds_per_part)
            )
        ]


# ---------------------------------------------------------------------------- writing


async def apply_liveness(session: AsyncSession, *, batch: LivenessBatch) -> list[Mapping[Any, Any]]:
    """Writes the batch in the session's transaction (the caller commits); returns the rows
    of the feeds whose status changed, with their full new state."""
    if batch.seen:
        await session.execute(
            update(feeds)
            .where(
                feeds.c.id == bindparam("b_id"),
                feeds.c.retired_at.is_(None),
                or_(feeds.c.last_seen.is_(None), feeds.c.last_seen < bindparam("b_seen")),
            )
            .values(last_seen=bindparam("b_seen")),
            [{"b_id": feed_id, "b_seen": seen} for feed_id, seen in batch.seen.items()],
        )
    current = await _current_statuses(session, list(batch.statuses))
    changing = [
        {"b_id": feed_id, "b_status": status}
        for feed_id, status in batch.statuses.items()
        if feed_id in current and current[feed_id] != status
    ]
    if not changing:
        return []
    await session.execute(
        update(feeds)
        .where(feeds.c.id == bindparam("b_id"), feeds.c.status != bindparam("b_status"))
        .values(status=bindparam("b_status"), revision=feeds.c.revision + 1),
        changing,
    )
    rows = await load_rows(session, [change["b_id"] for change in changing])
    now = utcnow()
    await enqueue_many(
        session, [outbox_row(EventType.FEED_STATUS, row, now) for row in rows.values()]
    )
    return list(rows.values())


async def _current_statuses(session: AsyncSession, feed_ids: list[str]) -> dict[str, str]:
    """Status of each live (not retired) feed among the ids."""
    found: dict[str, str] = {}
    for begin in range(0, len(feed_ids), LOOKUP_CHUNK):
        statement = select(feeds.c.id, feeds.c.status).where(
            feeds.c.id.in_(feed_ids[begin : begin + LOOKUP_CHUNK]), feeds.c.retired_at.is_(None)
        )
        found.update({row.id: row.status for row in (await session.execute(statement)).all()})
    return found


# Told of the feeds whose status changed (their event data) when some went offline, in the
# transaction that writes them (the webhook notifications of departments holding grants on
# feeds that went offline). A batch with no feed going offline does not call it.
StatusListener = Callable[[AsyncSession, Sequence[Mapping[Any, Any]]], Awaitable[None]]
OFFLINE = "offline"


# The same writes on SQLite as single statements for all the batch's feeds (the UPDATEs join
# the batch's (id, value) pairs): see write_liveness.
_SEEN_UPDATE = (
    "UPDATE feeds SET last_seen = v.column2 FROM (VALUES {pairs}) AS v "
    "WHERE feeds.id = v.column1 AND feeds.retired_at IS NULL "
    "AND (feeds.last_seen IS NULL OR feeds.last_seen < v.column2)"
)
_STATUS_UPDATE = (
    "UPDATE feeds SET status = v.column2, revision = feeds.revision + 1 "
    "FROM (VALUES {pairs}) AS v "
    "WHERE feeds.id = v.column1 AND feeds.retired_at IS NULL AND feeds.status != v.column2 "
    "RETURNING feeds.id"
)


def _pair_statements(template: str, pairs: list[tuple[str, str]]) -> list[DriverStatement]:
    return _value_statements(template, "pairs", pairs, PAIRS_PER_STATEMENT)


# A status change foreseen before the writers' turn holds only if the feed is still as it was
# read: same revision (any edit bumps it) and the last_seen the turn's first UPDATE leaves.
_FORESEEN_UPDATE = (
    "UPDATE feeds SET status = v.column2, revision = feeds.revision + 1 "
    "FROM (VALUES {quads}) AS v "
    "WHERE feeds.id = v.column1 AND feeds.retired_at IS NULL AND feeds.status != v.column2 "
    "AND feeds.revision = v.column3 AND feeds.last_seen IS v.column4 "
    "RETURNING feeds.id"
)
QUADS_PER_STATEMENT = 240  # 4 variables each: within SQLite's oldest limit of 999
_LAST_SEEN = sqlite_rows.COLUMNS.index("last_seen")


@dataclass(frozen=True)
class ForeseenChanges:
    """The status changes of a batch as read before the writers' turn, rendered there: each
    changing feed's event data and its outbox event, and the guarded UPDATEs that make the
    changes only where the feed is still as read (see :func:`foresee_changes`)."""

    updates: list[DriverStatement]
    expected: frozenset[str]
    documents: list[dict[str, Any]]
    outbox: DriverInsert


async def foresee_changes(
    session: AsyncSession, batch: LivenessBatch, *, created_at: datetime, dialect: Dialect
) -> ForeseenChanges:
    """Reads the batch's feeds (outside any turn: SQLite's readers do not wait for its
    writer) and renders the changes it would make, so that the turn only writes. Rendering
    the changed feeds' documents and events is most of a transition's cost, and in the turn
    every other writer waited for it (the gateways' first round: ~56 ms a part of 250 feeds,
    access requests queued behind)."""
    connection = await session.connection()
    ids = list(batch.statuses)
    quads: list[tuple[Any, ...]] = []
    documents: list[dict[str, Any]] = []
    for begin in range(0, len(ids), LOOKUP_CHUNK):
        chunk = tuple(ids[begin : begin + LOOKUP_CHUNK])
        result = await connection.exec_driver_sql(sqlite_rows.select_sql(len(chunk)), chunk)
        for values in result.all():
            row = sqlite_rows.decode_row(values)
            status = batch.statuses[row["id"]]
            if row["retired_at"] is not None or row["status"] == status:
                continue
            last_seen = values[_LAST_SEEN]  # as stored: the text the first UPDATE compares
            seen = batch.seen.get(row["id"])
            if seen is not None:
                reported = sqlite_rows.sqlite_time(seen)
                if last_seen is None or last_seen < reported:
                    last_seen = reported
            row["status"] = status
            row["revision"] += 1
            row["last_seen"] = (
                None if last_seen is None else sqlite_rows.rfc3339_from_sqlite(last_seen)
            )
            quads.append((row["id"], status, row["revision"] - 1, last_seen))
            documents.append(event_data(row))
    await session.commit()  # the read ends here, not in the turn
    return ForeseenChanges(
        updates=_value_statements(_FORESEEN_UPDATE, "quads", quads, QUADS_PER_STATEMENT),
        expected=frozenset(quad[0] for quad in quads),
        documents=documents,
        outbox=_status_events(documents, created_at, dialect),
    )


def _status_events(
    documents: list[dict[str, Any]], created_at: datetime, dialect: Dialect
) -> DriverInsert:
    """The outbox rows of the changed feeds' ``feed.status`` events."""
    if not documents:
        return DriverInsert("", [])
    status = EventType.FEED_STATUS
    events = [document_outbox_row(status, document, created_at) for document in documents]
    return prepare_enqueue(events, created_at=created_at, dialect=dialect)


def _value_statements(
    template: str, name: str, rows: list[tuple[Any, ...]], per_statement: int
) -> list[DriverStatement]:
    statements = []
    for begin in range(0, len(rows), per_statement):
        chunk = rows[begin : begin + per_statement]
        placeholders = "(" + ", ".join("?" * len(chunk[0])) + ")"
        sql = template.format(**{name: ", ".join([placeholders] * len(chunk))})
        statements.append(DriverStatement(sql, tuple(value for row in chunk for value in row)))
    return statements


def sqlite_liveness_work(
    batch: LivenessBatch,
    *,
    created_at: datetime,
    dialect: Dialect,
    foreseen: ForeseenChanges | None = None,
) -> DriverWork[list[dict[str, Any]]]:
    """:func:`apply_liveness` as driver work on SQLite, writing the same rows and events: one
    UPDATE for every feed's ``last_seen``, one for the statuses that differ (returning which),
    one read of the changed rows, their outbox events as one multi-row INSERT. The changed
    feeds come back as their feed-metadata event data (what the index is told).

    With ``foreseen`` (:func:`foresee_changes`), its guarded UPDATEs come first, and when
    they changed exactly the feeds foreseen and no other feed changed, its rendered events
    are written as they are: the turn renders nothing. Otherwise (a feed edited or reported
    between the read and the turn) the changed feeds are read and rendered here."""
    seen = _pair_statements(
        _SEEN_UPDATE,
        [(feed_id, sqlite_rows.sqlite_time(moment)) for feed_id, moment in batch.seen.items()],
    )
    statuses = _pair_statements(_STATUS_UPDATE, list(batch.statuses.items()))

    def work(calls: DriverCalls) -> list[dict[str, Any]]:
        for statement in seen:
            calls.execute(statement)
        held: list[str] = []
        if foreseen is not None:
            held = [row[0] for statement in foreseen.updates for row in calls.execute(statement)]
        late = [row[0] for statement in statuses for row in calls.execute(statement)]
        if foreseen is not None and not late and len(held) == len(foreseen.expected):
            calls.executemany(foreseen.outbox)
            return foreseen.documents
        changed = held + late
        if not changed:
            return []
        rows: dict[str, dict[str, Any]] = {}
        for begin in range(0, len(changed), LOOKUP_CHUNK):
            ids = tuple(changed[begin : begin + LOOKUP_CHUNK])
            for values in calls.execute(DriverStatement(sqlite_rows.select_sql(len(ids)), ids)):
                row = sqlite_rows.decode_row(values)
                rows[row["id"]] = row
        documents = [event_data(rows[feed_id]) for feed_id in changed]
        calls.executemany(_status_events(documents, created_at, dialect))
        return documents

    return work


async def write_liveness(
    session: AsyncSession, batch: LivenessBatch, listener: StatusListener | None = None
) -> list[dict[str, Any]]:
    """Writes and commits the batch in the writers' turn, the listener told of the changed
    feeds in the same transaction when some went offline; returns the changed feeds as their
    feed-metadata event data (each rendered once, for the outbox event and the index).

    On SQLite the writes are one piece of driver work (:func:`sqlite_liveness_work`): a
    statement for all the batch's feeds instead of one step per feed, since every step is a
    wait to take the GIL back beside a busy event loop (the gateways' first round turning
    56,000 feeds online held the turn for ~150 ms per 250 feeds, and access requests waited
    behind it). Elsewhere the same writes go through the session (:func:`apply_liveness`).
    """
    told = listener if OFFLINE in batch.statuses.values() else None
    work = None
    if sqlite_rows.is_sqlite(session):  # the changes read and rendered before the turn
        now, dialect = utcnow(), session.get_bind().dialect
        foreseen = await foresee_changes(session, batch, created_at=now, dialect=dialect)
        work = sqlite_liveness_work(batch, created_at=now, dialect=dialect, foreseen=foreseen)
        if told is None:
            # No listener to wait for in the turn: the work and the commit are one call on
            # the connection's thread (the gateways' rounds: feeds going online, last_seen).
            return await commit_in_turn(session, "liveness", work)
    async with writes_in_turn(session, "liveness"):
        if work is not None:
            changed: list[dict[str, Any]] = await run_driver_work(session, work)
        else:
            changed = [event_data(row) for row in await apply_liveness(session, batch=batch)]
        if changed and told is not None:
            await told(session, changed)
        await session.commit()
    return changed


# ---------------------------------------------------------------------------- the consumer


class LivenessApplier:
    """A Runtime component of the API: consumes feed-status and applies it (see above)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: async_sessionmaker[AsyncSession],
        index: FeedIndex,
        topics_ready: asyncio.Event,
        on_written: Callable[[], None] | None = None,
        in_transaction: StatusListener | None = None,
    ) -> None:
        self.settings = settings
        self.in_transaction = in_transaction
        self.sessions = sessions
        self.index = index
        self.topics_ready = topics_ready
        self.on_written = on_written
        self.topic = topic_name(settings.topic_prefix, FEED_STATUS_TOPIC)
        self.group = topic_name(settings.topic_prefix, GROUP_SUFFIX)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="liveness-applier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def apply(self, events: Iterable[Liveness]) -> int:
        """Applies the events (folded per feed) a part of APPLY_FEEDS feeds at a time, each
        part in one transaction and then told to the index, letting the loop run in between
        (and giving way to requests in flight: ``infra.foreground``); returns how many feeds
        changed status. Applying a part again changes nothing (a status already set, a
        last_seen not newer), so a batch retried after a failure in its middle ends the same."""
        batch = LivenessBatch()
        for event in events:
            batch.add(event)
        changed = 0
        for part in batch.parts(APPLY_FEEDS):
            started = time.perf_counter()
            changed += await self._apply_part(part)
            await asyncio.sleep(0)
            await give_way("liveness", time.perf_counter() - started)
        return changed

    async def _apply_part(self, batch: LivenessBatch) -> int:
        # in turn with the process's other writers (write_liveness)
        async with self.sessions() as session:
            changed = await write_liveness(session, batch, self.in_transaction)
        # what the UPDATE did to last_seen, then the new revisions of the changed feeds
        self.index.rendered.saw(batch.seen)
        if changed:
            self.index.apply_status_changes(changed)
        if changed and self.on_written is not None:
            self.on_written()  # outbox rows to relay
        TRANSITIONS.inc(len(changed))
        SEEN_UPDATES.inc(len(batch.seen))
        return len(changed)

    async def _run(self) -> None:
        await self.topics_ready.wait()
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                self.topic,
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=self.group,
                client_id="feedgrid-registry-status",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            try:
                await consumer.start()
                delay = 0.5
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("liveness applier waiting for kafka: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=FETCH_RECORDS)
            events: list[Liveness] = []
            newest_ms = 0
            messages = itertools.chain.from_iterable(fetched.values())
            for read, message in enumerate(messages, 1):
                if read % READ_SLICE == 0:
                    await asyncio.sleep(0)
                event = read_liveness(message.value)
                if event is None:
                    UNREADABLE.inc()
                    log.warning(
                        "unreadable feed-status message skipped",
                        extra={"partition": message.partition, "offset": message.offset},
                    )
                    continue
                events.append(event)
                newest_ms = max(newest_ms, message.timestamp)
            if fetched:
                await self._apply_until_done(events)
                try:
                    await consumer.commit()
                except CommitFailedError as error:  # a rebalance: the next owner re-applies
                    log.warning("feed-status offsets not committed: %s", error)
                BATCHES.inc()
            if newest_ms:
                LAG_SECONDS.set(max(0.0, time.time() - newest_ms / 1000))
            await self._measure_lag(consumer)

    async def _apply_until_done(self, events: list[Liveness]) -> None:
        delay = 0.5
        while True:
            try:
                await self.apply(events)
                return
            except Exception as error:
                APPLY_ERRORS.inc()
                log.warning("feed-status batch not applied, retrying: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    @staticmethod
    async def _measure_lag(consumer: AIOKafkaConsumer) -> None:
        behind = 0
        for partition in consumer.assignment():
            highwater = consumer.highwater(partition)
            if highwater is not None:
                with contextlib.suppress(Exception):
                    behind += max(0, highwater - await consumer.position(partition))
        LAG_MESSAGES.set(behind)
