"""ClickHouse refusing inserts for a while: the worker pauses consumption and loses nothing.

The failure is ClickHouse's own, through the real engine: the access_events table is told
(``max_parts_in_total = 1``) that it holds too many parts, so every insert fails with
TOO_MANY_PARTS, the rejection a ClickHouse server gives when inserts outpace merges. The
agents and the sink run in this process (the embedded worker), which owns the chdb
directory, so the statement reaches the same engine the sink writes to.

While inserts fail, events keep arriving in Kafka: the sink reports itself unavailable
(``feedgrid_sink_available`` 0), ClickHouse gains no row, and the worker's committed offsets
never pass what ClickHouse holds. Once the setting is reset, every event ends up stored once
and counted once by the rollups.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from infra.clickhouse import connect
from infra.kafka_admin import ensure_topics
from schemas.settings import Settings
from schemas.topics import ACCESS_EVENTS, topic_name
from tests.faults.access_stream import (
    AccessStream,
    assert_each_retrieval_counted_once,
    stored_counts,
)
from tests.faults.fault_support import KafkaPositions, access_events_group, produce_batched
from tests.integration.streams_support import fast_tuning, running_worker, wait_for_value

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RETRIEVALS_BEFORE = 2_500
RETRIEVALS_DURING = 5_000
OUTAGE_WATCH_SECONDS = 10.0


def _metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _clickhouse(settings: Settings, statement: str) -> None:
    connect(settings.clickhouse_url).command(statement)


async def _wait_for(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return bool(condition())


async def test_inserts_refused_pause_consumption_and_lose_nothing(
    stream_settings: Settings,
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)
    before = AccessStream(start=start, retrievals=RETRIEVALS_BEFORE)
    during = AccessStream(start=start, retrievals=RETRIEVALS_DURING, first=RETRIEVALS_BEFORE)
    total = before.events + during.events
    settings = stream_settings
    topic = topic_name(settings.topic_prefix, ACCESS_EVENTS)
    await ensure_topics(settings)
    group = access_events_group(settings)
    partitions = settings.topic_partitions

    began = time.monotonic()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    async with (
        running_worker(settings, fast_tuning()),
        KafkaPositions(settings.kafka_bootstrap, topic, partitions, group) as positions,
    ):
        lap("worker started")
        await produce_batched(settings.kafka_bootstrap, topic, before.records(), partitions)
        count_sql = "SELECT count() FROM access_events"
        assert await wait_for_value(settings, count_sql, before.events, timeout=120) == (
            before.events
        )
        assert await positions.wait_committed(before.events, timeout=60) == before.events
        assert _metric("feedgrid_sink_available") == 1
        lap("first events stored")

        errors_before = _metric("feedgrid_sink_errors_total", table="access_events")
        await asyncio.to_thread(
            _clickhouse, settings, "ALTER TABLE access_events MODIFY SETTING max_parts_in_total = 1"
        )
        try:
            await produce_batched(settings.kafka_bootstrap, topic, during.records(), partitions)
            assert await positions.end() == total
            assert await _wait_for(lambda: _metric("feedgrid_sink_available") == 0, timeout=60)
            lap("sink unavailable")

            # Paused: for a while, nothing more is stored and nothing more is committed.
            samples = []
            watch_until = time.monotonic() + OUTAGE_WATCH_SECONDS
            while time.monotonic() < watch_until:
                stored = (await asyncio.to_thread(stored_counts, settings))[0]
                committed = await positions.committed()
                samples.append((stored, committed))
                assert committed <= stored, f"committed {committed} past stored {stored}"
                await asyncio.sleep(0.5)
            assert {sample for sample in samples} == {(before.events, before.events)}, samples
            assert _metric("feedgrid_sink_available") == 0
            refused = _metric("feedgrid_sink_errors_total", table="access_events") - errors_before
            assert refused >= 3, "the sink should have kept retrying the refused insert"
        finally:
            await asyncio.to_thread(
                _clickhouse, settings, "ALTER TABLE access_events RESET SETTING max_parts_in_total"
            )

        lap("inserts accepted again")
        assert await wait_for_value(settings, count_sql, total, timeout=120) == total
        assert await positions.wait_committed(total, timeout=60) == total
        assert await _wait_for(lambda: _metric("feedgrid_sink_available") == 1, timeout=30)
        lap("all stored")

    assert stored_counts(settings) == (total, total)
    assert_each_retrieval_counted_once(settings, [before, during])
    lap("checked")
    print(f"\ninsert attempts refused during the outage: {refused:.0f}; seconds: {phases}")
