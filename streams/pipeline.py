"""The batch path: access events, heartbeats and feed metadata, from Kafka batches to
ClickHouse blocks.

Why not Faust's per-message streams here: each message costs Faust a conductor hop, a channel
queue and a ``wait_first`` (about half the worker's time at 5,000 events/s). These three topics
carry nearly every event, so they are read below it, by one aiokafka consumer in a group of
its own (``<prefix>worker-batch``), thousands of records per fetch:

1. **cut** a batch when ``batch_size`` records or ``batch_max_bytes`` of messages are in, or
   ``flush_seconds`` after the first (a batch holds at most ``batch_max_bytes`` and one record:
   what passes it waits for the next);
2. **prepare** it (CPU only): each handler validates, enriches and judges its records into a
   :class:`streams.batch.Batch` (columns for ClickHouse, rows, alerts, outgoing messages);
3. **store** it: ClickHouse first (one column-oriented block per table), then the outgoing
   messages, and only then **commit** the offsets it covers.

While batch *n* is stored (the engine works in a thread) batch *n+1* is fetched and prepared;
at most one store is in flight, so blocks are inserted and offsets committed in order. A
committed offset never passes a row ClickHouse does not hold, exactly as before.

The topics are keyed by feed id and read with the range assignor, so a worker owns partition
*p* of access events and heartbeats alike: the heartbeat handler finds a feed's grants in the
same worker's grant book. (Feed metadata needs no such pairing: each row stands alone.)
State the handlers keep (grants, liveness) is read back from ClickHouse whenever partitions are
assigned; live sessions are soft state and start empty.

Nothing can freeze it silently: ``feedgrid_stream_stalled_seconds{agent}`` counts the seconds
since the last commit while the agent's lag is above zero, in ``/metrics`` and in ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord
from prometheus_client import Histogram

from infra.foreground import give_way
from infra.health import register_check
from streams.access import empty_columns
from streams.batch import Batch, alert_messages
from streams.metrics import BATCH_SECONDS, EVENTS_HANDLED, LAG, STALLED, faust_agents_stalled
from streams.publisher import Publisher
from streams.sink import ClickHouseSink
from streams.tuning import StreamTuning

log = logging.getLogger("feedgrid.streams.pipeline")

PREPARE_SECONDS = Histogram(
    "feedgrid_stream_prepare_seconds",
    "CPU time to validate, enrich and judge one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

T = TypeVar("T")
REVOKE_GRACE_SECONDS = 10.0
STOP_GRACE_SECONDS = 10.0


class Handler(Protocol):
    name: str

    def prepare(self, records: Sequence[ConsumerRecord[Any, Any]], batch: Batch) -> None: ...

    def restore(self, url: str, owns: Callable[[str], bool]) -> int: ...


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as every client)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class BatchPipeline:
    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        handlers: dict[str, Handler],
        sink: ClickHouseSink,
        publisher: Publisher,
        tuning: StreamTuning,
        clickhouse_url: str,
        alerts_topic: str,
        events_topic: str,
        scan: Callable[[float, Batch], int] | None = None,
        scan_agent: str = "heartbeats",
        read_up_to: Callable[[], float] | None = None,
        restore_extra: Sequence[Callable[[Callable[[str], bool]], int]] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.handlers = handlers  # topic -> handler
        self.sink = sink
        self.publisher = publisher
        self.tuning = tuning
        self.clickhouse_url = clickhouse_url
        self.alerts_topic = alerts_topic
        self.events_topic = events_topic  # the topic whose rows go to access_events
        self.scan = scan
        self.scan_agent = scan_agent
        self.read_up_to = read_up_to
        self._consumer: AIOKafkaConsumer | None = None
        self._in_flight: asyncio.Task[None] | None = None
        self._buffer: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        self._count = 0
        self._bytes = 0
        self._assigned: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self._pending_restore = True
        self._restore_task: asyncio.Task[None] | None = None
        self._owned: dict[str, set[int]] = {}
        self.batches_stored = 0
        self._figures: dict[str, tuple[int, float]] = {}
        self._lag_since: dict[str, float] = {}
        self.faust_agents: list[str] = []
        register_check("stream-worker", self.health)

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_records=self.tuning.max_poll_records,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=int(self.tuning.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(max(1.0, self.tuning.session_timeout_seconds / 10) * 1000),
            # A long ClickHouse outage holds the loop on one store: stay in the group meanwhile.
            max_poll_interval_ms=3_600_000,
        )
        consumer.subscribe(list(self.handlers), listener=_Rebalance(self))
        await consumer.start()
        self._consumer = consumer
        watchdog = asyncio.create_task(self._watch(stop), name="stream-watchdog")
        try:
            await self._loop(consumer, stop)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await _cancel(self._restore_task)
            # A store that cannot finish (ClickHouse away) is given up: it was not committed.
            task, self._in_flight = self._in_flight, None
            if task is not None:
                done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
                if not done:
                    log.warning("a batch was not stored before the stop; it will be read again")
                await _cancel(task)
            self._consumer = None
            await consumer.stop()

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        flush = self.tuning.flush_seconds
        first_at = 0.0
        next_scan = time.monotonic() + self.tuning.liveness_scan_seconds
        while not stop.is_set():
            self._restore_when_assigned()
            now = time.monotonic()
            wait = flush if not self._count else first_at + flush - now
            if self._pending_restore:
                wait = max(wait, 0.1)  # state comes first: fetch (the lag shows), never spin
            if self._held_back():
                await asyncio.sleep(0.05)
                fetched = {}
            else:
                fetched = await consumer.getmany(
                    timeout_ms=int(max(0.0, min(wait, 0.2)) * 1000),
                    max_records=self.tuning.max_poll_records,
                )
            for tp, records in fetched.items():
                if tp not in self._assigned or not records:
                    continue  # revoked while the fetch was under way
                if not self._count:
                    first_at = time.monotonic()
                self._buffer.setdefault(tp, []).extend(records)
                self._count += len(records)
                self._bytes += sum(record.serialized_value_size for record in records)
            now = time.monotonic()
            scan_due = self.scan is not None and now >= next_scan
            full = (
                self._count >= self.tuning.batch_size or self._bytes >= self.tuning.batch_max_bytes
            )
            due = self._count > 0 and now - first_at >= flush
            if not (full or due or scan_due) or self._pending_restore:
                await asyncio.sleep(0)  # a fetch that returned at once did not yield
                continue
            started = time.perf_counter()
            batch = self._prepare(self._cut())
            if scan_due and self.scan is not None:
                next_scan = now + self.tuning.liveness_scan_seconds
                self.scan(self._liveness_clock(), batch)
            prepared = time.perf_counter() - started  # the CPU part: not the store's wait below
            if not await self._in_flight_done(stop):
                return
            if batch.events or batch.feed_status or batch.outgoing or batch.alerts:
                self._in_flight = asyncio.create_task(self._store(batch), name="stream-store")
            await asyncio.sleep(0)
            # embedded in the API's process: its requests first (infra/foreground)
            await give_way("stream-batches", prepared)

    def _cut(self) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """The records of the next batch, taken from the buffer: all of them, or, when they
        pass ``batch_max_bytes``, each partition's oldest up to that size (at least one
        record); the rest waits for the next batch, in order."""
        buffered, budget = self._buffer, self.tuning.batch_max_bytes
        if self._bytes <= budget:
            self._buffer, self._count, self._bytes = {}, 0, 0
            return buffered
        taken: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        rest: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        size = 0
        for tp, records in buffered.items():
            end = 0
            while end < len(records) and size < budget:  # budget > 0: the first is taken
                size += records[end].serialized_value_size
                end += 1
            if end:
                taken[tp] = records[:end]
            if end < len(records):
                rest[tp] = records[end:]
        self._buffer = rest
        self._count = sum(len(records) for records in rest.values())
        self._bytes -= size
        return taken

    def _held_back(self) -> bool:
        """Twice a batch is buffered (state still being restored): fetch no more meanwhile."""
        tuning = self.tuning
        return self._count >= 2 * tuning.batch_size or self._bytes >= 2 * tuning.batch_max_bytes

    def _liveness_clock(self) -> float:
        """The moment silence is judged at: now, or, while the heartbeats are read behind,
        the newest report read so far (a backlog must not pass for silence)."""
        lag, _ = self._figures.get(self.scan_agent, (0, 0.0))
        if lag > 0 and self.read_up_to is not None:
            return min(time.time(), self.read_up_to())
        return time.time()

    def _prepare(self, buffered: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> Batch:
        started = time.perf_counter()
        batch = Batch(access_columns=empty_columns())
        by_topic: dict[str, list[ConsumerRecord[Any, Any]]] = {}
        for tp, records in buffered.items():
            by_topic.setdefault(tp.topic, []).extend(records)
            batch.offsets[tp] = records[-1].offset + 1
        for topic, records in by_topic.items():
            handler = self.handlers[topic]
            handler.prepare(records, batch)
            batch.counts[handler.name] = batch.counts.get(handler.name, 0) + len(records)
        PREPARE_SECONDS.observe(time.perf_counter() - started)
        return batch

    async def _store(self, batch: Batch) -> None:
        started = time.perf_counter()
        sink = self.sink
        # A feed's new state before the events about it: a reader joining the two never sees
        # an event of a feed feed_metadata does not know yet (of one batch).
        await sink.write("feed_metadata", batch.feed_metadata)
        await sink.write_events("access_events", batch.access_columns)
        await sink.write("decisions", batch.decisions)
        await sink.write("grant_states", batch.grant_states)
        await sink.write("feed_status", batch.feed_status)
        await sink.write("alerts", [alert.to_row() for alert in batch.alerts])
        alerts = alert_messages(self.alerts_topic, batch.alerts)
        await self.publisher.publish([*alerts, *batch.outgoing])
        elapsed = time.perf_counter() - started
        await self._commit(batch.offsets)
        for agent, events in batch.counts.items():
            EVENTS_HANDLED.labels(agent).inc(events)
            BATCH_SECONDS.labels(agent).observe(elapsed)
        self.batches_stored += 1

    async def _in_flight_done(self, stop: asyncio.Event) -> bool:
        """Waits for the store in flight; False when told to stop first."""
        task = self._in_flight
        if task is None:
            return True
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            return False
        self._in_flight = None
        task.result()
        return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        owned = {tp: offset for tp, offset in offsets.items() if tp in self._assigned}
        if consumer is None or not owned:
            return
        try:
            await consumer.commit(owned)
        except (CommitFailedError, KafkaError) as error:
            # The group moved on (a rebalance): the new owner reads these again; the sink
            # drops what it already holds.
            log.warning("offsets not committed (%s); the batch will be read again", error)
            return
        self._committed.update(owned)
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------ rebalancing

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Lets the store in flight finish (briefly: its commit may fail now, which only means
        the next owner reads it again), and forgets what was fetched and not prepared."""
        task = self._in_flight
        if task is not None:
            await asyncio.wait({task}, timeout=REVOKE_GRACE_SECONDS)
            if task.done():
                self._in_flight = None
                with contextlib.suppress(Exception):
                    task.result()
        await _cancel(self._restore_task)
        self._restore_task = None
        self._buffer, self._count, self._bytes = {}, 0, 0
        self._assigned -= partitions
        self._pending_restore = True

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Notes the assignment; the loop restores the handlers' state before its next batch
        (never here: a rebalance callback that waits on ClickHouse would hold the group)."""
        self._assigned = set(partitions)
        # Lag counts from where each partition starts (``_restore`` asks), then from commits.
        self._committed = {}
        self._owned = {}
        for tp in partitions:
            self._owned.setdefault(tp.topic, set()).add(tp.partition)
        self._pending_restore = True
        self._last_commit = time.monotonic()

    def _restore_when_assigned(self) -> None:
        task = self._restore_task
        if task is not None and task.done():
            self._restore_task = None
            task.result()  # a bug surfaces here; ClickHouse errors are retried inside
            self._pending_restore = False
            self._last_commit = time.monotonic()
        elif task is None and self._pending_restore:
            self._restore_task = asyncio.create_task(self._restore(), name="stream-restore")

    async def _restore(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            # Where consumption starts: the lag until the first commit counts from here (a
            # partition with nothing new since a restart is no lag, not its whole topic).
            for tp in sorted(self._assigned - self._committed.keys()):
                with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                    self._committed.setdefault(tp, await consumer.position(tp))
        for topic, handler in self.handlers.items():
            mine = self._owned.get(topic, set())
            total = len((consumer.partitions_for_topic(topic) if consumer else None) or ())

            def owns(feed_id: str, mine: set[int] = mine, total: int = total) -> bool:
                return total > 0 and partition_of(feed_id.encode(), total) in mine

            restored = await self._retrying_restore(
                handler.name, functools.partial(handler.restore, self.clickhouse_url, owns)
            )
            log.info("%s: %d partitions, %d state entries restored", topic, len(mine), restored)
        access = sorted(self._owned.get(self.events_topic, set()))
        await self.sink.load_replay_horizons("access_events", access)

    async def _retrying_restore(self, name: str, call: Callable[[], T]) -> T:
        delay = self.tuning.retry_initial_seconds
        while True:
            try:
                return await asyncio.to_thread(call)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s state not restored yet (clickhouse): %s", name, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.tuning.retry_max_seconds)

    # ------------------------------------------------------------------ watchdog

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.measure()
            await asyncio.sleep(1.0)

    def measure(self) -> dict[str, tuple[int, float]]:
        """Lag and stalled seconds per agent, also set on the gauges."""
        consumer = self._consumer
        figures: dict[str, tuple[int, float]] = {}
        now = time.monotonic()
        for topic, handler in self.handlers.items():
            lag = 0
            for tp in self._assigned:
                if tp.topic != topic or consumer is None:
                    continue
                end, committed = consumer.highwater(tp), self._committed.get(tp)
                if end is not None and committed is not None:
                    lag += max(0, end - committed)
            # Seconds without a commit while there was work: from the later of the last commit
            # and the moment the lag last rose above 0 (a quiet spell is not a stall).
            if lag <= 0:
                self._lag_since.pop(handler.name, None)
                stalled = 0.0
            else:
                since = self._lag_since.setdefault(handler.name, now)
                stalled = now - max(self._last_commit, since)
            LAG.labels(handler.name).set(lag)
            STALLED.labels(handler.name).set(round(stalled, 1))
            figures[handler.name] = (lag, stalled)
        for agent, seconds in faust_agents_stalled(self.faust_agents).items():
            figures[agent] = (1 if seconds else 0, seconds)
        self._figures = figures
        return figures

    def health(self) -> tuple[bool, dict[str, Any]]:
        """The watchdog's latest figures (it runs on the worker's loop, this on any thread)."""
        figures = dict(self._figures)
        stalled = {name: seconds for name, (_, seconds) in figures.items()}
        ready = all(seconds < self.tuning.stall_seconds for seconds in stalled.values())
        return ready, {
            "stalled_seconds": stalled,
            "lag": {name: lag for name, (lag, _) in figures.items()},
        }


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, pipeline: BatchPipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.pipeline.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.pipeline.assigned(set(assigned))


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
