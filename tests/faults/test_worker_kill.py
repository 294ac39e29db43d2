"""A stream worker SIGKILLed five times during a long stream stores every event exactly once.

The worker is a real ``feedgrid worker`` process on the shared broker with its own chdb
directory. Access events (two per retrieval) are published as fast as Kafka takes them while
the worker consumes; each time its committed position passes another mark it is
killed with SIGKILL at a different moment of its commit cycle and started again at once.
Afterwards ClickHouse must hold each produced event once (row count and distinct event ids)
and every materialized rollup must count each retrieval, and its bytes, once.

A million events (the issue's figure) take about 4 minutes here when the machine is otherwise
quiet (the worker consumes about 5,000 events/s on this 2-core machine, restarts included),
and three times that when other work competes for the cores: waits fail only on a stall, never
on slowness. ``FEEDGRID_FAULT_STREAM_EVENTS`` sets another size (e.g. 200000 for a quick run);
the kills, their spread over the stream and every check stay the same.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.kafka_admin import ensure_topics
from schemas.settings import Settings
from schemas.topics import ACCESS_EVENTS, topic_name
from tests.faults.access_stream import (
    AccessStream,
    assert_each_retrieval_counted_once,
    stored_counts,
)
from tests.faults.fault_support import (
    KafkaPositions,
    WorkerProcess,
    access_events_group,
    produce_batched,
)

EVENTS = int(os.environ.get("FEEDGRID_FAULT_STREAM_EVENTS", "1000000"))
# A wait fails when the committed position has not moved for this long (see wait_committed).
STALL_SECONDS = 180

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.timeout(max(600, EVENTS // 400)),
]
# Where the kills fall: committed share of the stream, and how long after passing it (spread
# over the one-second commit interval, so some kills cut a batch between insert and commit).
KILLS = ((0.10, 0.15), (0.28, 0.35), (0.46, 0.55), (0.64, 0.75), (0.82, 0.95))


async def test_worker_killed_five_times_mid_stream_stores_each_event_once(
    stream_settings: Settings, tmp_path: Path
) -> None:
    began = time.monotonic()
    stream = AccessStream(start=datetime.now(UTC) - timedelta(hours=5), retrievals=EVENTS // 2)
    topic = topic_name(stream_settings.topic_prefix, ACCESS_EVENTS)
    await ensure_topics(stream_settings)
    worker = WorkerProcess(
        stream_settings,
        tmp_path / "worker.log",
        FEEDGRID_STREAM_BATCH_SIZE="10000",
        FEEDGRID_STREAM_FLUSH_SECONDS="0.3",
    )
    worker.start()
    producing = asyncio.create_task(_produce(stream_settings, topic, stream))
    killed_at: list[int] = []
    try:
        async with KafkaPositions(
            stream_settings.kafka_bootstrap,
            topic,
            stream_settings.topic_partitions,
            access_events_group(stream_settings),
        ) as positions:
            for share, delay in KILLS:
                mark = int(EVENTS * share)
                print(f"{time.monotonic() - began:.0f}s: waiting for {mark}", flush=True)
                reached = await positions.wait_committed(mark, timeout=STALL_SECONDS)
                assert reached >= mark, f"stuck at {reached}:\n{worker.log_tail()}"
                await asyncio.sleep(delay)
                worker.kill()
                killed_at.append(await positions.committed())
                worker.start()
            produced_in = await producing
            assert await positions.end() == EVENTS
            reached = await positions.wait_committed(EVENTS, timeout=STALL_SECONDS)
            assert reached == EVENTS, worker.log_tail()
        replayed = worker.metric('feedgrid_sink_duplicates_total{table="access_events"}')
    finally:
        producing.cancel()
        exit_code = worker.stop()
    assert exit_code == 0, worker.log_tail()
    assert all(position < EVENTS for position in killed_at), killed_at

    assert stored_counts(stream_settings) == (EVENTS, EVENTS)
    assert_each_retrieval_counted_once(stream_settings, [stream])
    print(
        f"\n{EVENTS} events, killed at committed {killed_at}; produced in {produced_in:.0f}s, "
        f"all stored after {time.monotonic() - began:.0f}s; "
        f"replayed after the last kill and dropped: {replayed:.0f}"
    )


async def _produce(settings: Settings, topic: str, stream: AccessStream) -> float:
    """Publishes the whole stream; returns the seconds it took."""
    began = time.monotonic()
    sent = await produce_batched(
        settings.kafka_bootstrap, topic, stream.records(), settings.topic_partitions
    )
    assert sent == stream.events
    return time.monotonic() - began
