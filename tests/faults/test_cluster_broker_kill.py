"""A broker SIGKILLed in the middle of a long stream on a three-node cluster loses nothing.

The scale mode's topology on one machine: ``feedgrid kafka cluster`` starts three KRaft nodes
(broker and controller each) from the same jars as the shared broker, in a var dir of the
test's own; topics get three replicas and ``min.insync.replicas`` 2. A real ``feedgrid worker``
process (its own chdb directory) lists all three brokers. Access events are published with
acks=all by an idempotent producer, held at most a tenth of the stream ahead of what the
worker has committed so that producing goes on through the fault. When a third of the stream
is stored, one broker that leads partitions of the access-events topic (the consumer group's
coordinator when it leads one) is killed with SIGKILL; it is started again once two thirds
are stored, and rejoins. Afterwards every produced batch must have been acknowledged, the topic
must hold each event once, and ClickHouse must hold each event once (row count and distinct
event ids) with every materialized rollup counting each retrieval, and its bytes, once.

A million events (the issue's figure) take about 4 minutes at 5,000 events/s (the worker before
its batch rewrite); waits fail only on a stall, never on slowness. ``FEEDGRID_FAULT_STREAM_EVENTS``
sets another size (e.g. 100000 for a quick run); the fault, its place in the stream and every
check stay the same.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.kafka_admin import describe_topic_configs, ensure_topics
from schemas.settings import Settings
from schemas.topics import ACCESS_EVENTS, TOPIC_SPECS, topic_name
from tests.faults.access_stream import (
    AccessStream,
    assert_each_retrieval_counted_once,
    stored_counts,
)
from tests.faults.fault_support import (
    KafkaCluster,
    KafkaPositions,
    WorkerProcess,
    access_events_group,
    produce_batched,
)

EVENTS = int(os.environ.get("FEEDGRID_FAULT_STREAM_EVENTS", "1000000"))
# A wait fails when the committed position has not moved for this long (see wait_committed).
STALL_SECONDS = 180
# How far the producer may run ahead of what the worker has committed.
PRODUCER_LEAD = max(EVENTS // 10, 20_000)
KILL_AT = 1 / 3
RESTART_AT = 2 / 3

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    # sized for a worker storing 5,000 events/s on a loaded machine, plus the cluster's start
    pytest.mark.timeout(max(900, EVENTS // 400 + 600)),
]


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_settings(stream_settings: Settings, kafka_cluster: KafkaCluster) -> Settings:
    return stream_settings.model_copy(
        update={"kafka_bootstrap": kafka_cluster.bootstrap, "topic_replication": 3}
    )


async def test_broker_killed_mid_stream_on_a_three_node_cluster_stores_each_event_once(
    cluster_settings: Settings, kafka_cluster: KafkaCluster, tmp_path: Path
) -> None:
    settings = cluster_settings
    began = time.monotonic()
    stream = AccessStream(start=datetime.now(UTC) - timedelta(hours=5), retrievals=EVENTS // 2)
    topic = topic_name(settings.topic_prefix, ACCESS_EVENTS)
    await ensure_topics(settings)
    configs = await describe_topic_configs(settings.kafka_bootstrap, [topic])
    assert configs[topic]["min.insync.replicas"] == "2"

    worker = WorkerProcess(
        settings,
        tmp_path / "worker.log",
        FEEDGRID_STREAM_BATCH_SIZE="10000",
        FEEDGRID_STREAM_FLUSH_SECONDS="0.3",
    )
    worker.start()
    figures: dict[str, object] = {}
    producing: asyncio.Task[float] | None = None
    try:
        async with KafkaPositions(
            settings.kafka_bootstrap,
            topic,
            settings.topic_partitions,
            access_events_group(settings),
        ) as positions:
            assert all(count == 3 for count, _ in (await positions.replicas()).values())
            producing = asyncio.create_task(_produce(settings, topic, stream, positions))

            kill_mark = int(EVENTS * KILL_AT)
            reached = await positions.wait_committed(kill_mark, timeout=STALL_SECONDS)
            assert reached >= kill_mark, f"stuck at {reached}:\n{worker.log_tail()}"
            coordinator = await positions.coordinator()
            victim, leaders = await _broker_to_kill(positions, coordinator)
            await asyncio.to_thread(kafka_cluster.kill, victim)
            killed_at, committed_at_kill = time.monotonic(), reached
            figures |= {
                "killed node": victim,
                "leaders then": leaders,
                "group coordinator then": coordinator,
                "committed at the kill": committed_at_kill,
                "killed after": f"{killed_at - began:.0f}s",
            }
            assert not producing.done(), "the stream was all produced before the kill"

            restart_mark = int(EVENTS * RESTART_AT)
            reached = await positions.wait_committed(restart_mark, timeout=STALL_SECONDS)
            assert reached >= restart_mark, (
                f"stuck at {reached} with node {victim} down:\n{worker.log_tail()}"
            )
            figures["stored with one node down"] = reached - committed_at_kill
            figures["seconds with one node down"] = round(time.monotonic() - killed_at)
            await asyncio.to_thread(kafka_cluster.start)
            figures["leaders after the restart"] = await positions.leaders()

            produced_in = await producing
            assert await positions.end() == EVENTS  # acknowledged once each: no retried copy
            reached = await positions.wait_committed(EVENTS, timeout=STALL_SECONDS)
            assert reached == EVENTS, worker.log_tail()
            figures["in-sync replicas at the end"] = await positions.replicas()
            replication = await positions.replication_by_topic(settings.topic_prefix)
        replayed = worker.metric('feedgrid_sink_duplicates_total{table="access_events"}')
    finally:
        if producing is not None:
            producing.cancel()
        exit_code = worker.stop()
    assert exit_code == 0, worker.log_tail()
    expected = {topic_name(settings.topic_prefix, spec.suffix) for spec in TOPIC_SPECS}
    assert expected <= set(replication), replication
    assert set(replication.values()) == {3}, replication  # the worker's own topics too

    assert stored_counts(settings) == (EVENTS, EVENTS)
    assert_each_retrieval_counted_once(settings, [stream])
    print(
        f"\n{EVENTS} events on {settings.kafka_bootstrap}; produced (acks=all) in "
        f"{produced_in:.0f}s, all stored after {time.monotonic() - began:.0f}s; "
        f"replayed and dropped by the sink: {replayed:.0f}; {figures}"
    )


async def _produce(
    settings: Settings, topic: str, stream: AccessStream, positions: KafkaPositions
) -> float:
    """Publishes the whole stream with acks=all, never more than PRODUCER_LEAD events ahead
    of the worker's committed position; returns the seconds it took."""

    async def hold_back(sent: int) -> None:
        if sent > PRODUCER_LEAD:
            await positions.wait_committed(sent - PRODUCER_LEAD, timeout=STALL_SECONDS)

    began = time.monotonic()
    sent = await produce_batched(
        settings.kafka_bootstrap,
        topic,
        stream.records(),
        settings.topic_partitions,
        acks="all",
        pace=hold_back,
    )
    assert sent == stream.events
    return time.monotonic() - began


async def _broker_to_kill(
    positions: KafkaPositions, coordinator: int
) -> tuple[int, dict[int, int]]:
    """A broker leading partitions of the topic: the group's coordinator when it leads one
    (its death then moves the committed offsets too), else the one leading the most."""
    leaders = await positions.leaders()
    if coordinator in leaders.values():
        return coordinator, leaders
    return Counter(leaders.values()).most_common(1)[0][0], leaders
