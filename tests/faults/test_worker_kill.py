"""A stream worker killed with SIGKILL mid-stream and restarted stores every event exactly once.

The worker is a real ``python -m streams.worker`` process on the real broker with its own chdb
directory. Events stream in while the worker is killed twice at arbitrary points; afterwards
ClickHouse must hold each produced event once (row count and distinct event ids) and the
materialized rollups must count each retrieval once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.events import CloudEvent
from schemas.settings import Settings
from schemas.topics import ACCESS_EVENTS, topic_name
from streams.kafka_admin import ensure_topics
from tests.integration.streams_support import (
    Retrieval,
    close_analytics,
    make_settings,
    query,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

EVENTS = 60_000
RATE_PER_SECOND = 6_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def worker_settings(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, sqlite_template: Path
) -> Iterator[Settings]:
    settings = make_settings(tmp_path, kafka_bootstrap, topic_prefix, sqlite_template)
    yield settings
    close_analytics(settings)


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.metrics_port = _free_port()
        self.env = os.environ | {
            "FEEDGRID_DATABASE_URL": settings.database_url,
            "FEEDGRID_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "FEEDGRID_CLICKHOUSE_URL": settings.clickhouse_url,
            "FEEDGRID_TOPIC_PREFIX": settings.topic_prefix,
            "FEEDGRID_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "FEEDGRID_LOG_FORMAT": "console",
            "FEEDGRID_STREAM_BATCH_SIZE": "2000",
            "FEEDGRID_STREAM_FLUSH_SECONDS": "0.3",
            "FEEDGRID_STREAM_METRICS_PORT": str(self.metrics_port),
            # A killed worker stays in the consumer group until its session times out.
            "FEEDGRID_STREAM_SESSION_TIMEOUT_SECONDS": "6",
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.worker"], env=self.env, stdout=log, stderr=log
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(30)

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


async def committed_offsets(settings: Settings) -> int:
    """Offsets the worker's consumer group committed on the access-events topic, summed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.topic_prefix}worker")
    finally:
        await admin.close()
    topic = topic_name(settings.topic_prefix, ACCESS_EVENTS)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def end_offsets(settings: Settings) -> int:
    topic = topic_name(settings.topic_prefix, ACCESS_EVENTS)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def wait_committed(settings: Settings, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    committed = 0
    while time.monotonic() < deadline:
        committed = await committed_offsets(settings)
        if committed >= at_least:
            return committed
        await asyncio.sleep(0.2)
    return committed


def stream_of_events(count: int) -> list[CloudEvent]:
    start = datetime.now(UTC) - timedelta(minutes=30)
    events: list[CloudEvent] = []
    for index in range(count // 2):
        retrieval = Retrieval(
            feed_id=f"feed-{index % 500}",
            requester_department=f"dept-{index % 7}",
            requester_user=f"user-{index % 97}",
            grant_id=f"g-{index % 500}",
            started_at=start + timedelta(milliseconds=30 * index),
            seconds=1.5,
            bytes=1_000 + index,
        )
        events.extend(retrieval.events())
    return events


async def produce_steadily(settings: Settings, events: list[CloudEvent]) -> None:
    """Publishes the events at about RATE_PER_SECOND, keyed by feed, as the relay would."""
    await ensure_topics(settings)
    topic = topic_name(settings.topic_prefix, ACCESS_EVENTS)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        chunk = RATE_PER_SECOND // 10
        for start in range(0, len(events), chunk):
            began = time.monotonic()
            deliveries = [
                await producer.send(topic, event.to_bytes(), (event.subject or "").encode())
                for event in events[start : start + chunk]
            ]
            await asyncio.gather(*deliveries)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
    finally:
        await producer.stop()


async def test_worker_killed_mid_stream_stores_every_event_exactly_once(
    worker_settings: Settings, tmp_path: Path
) -> None:
    events = stream_of_events(EVENTS)
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log")
    worker.start()
    producing = asyncio.create_task(produce_steadily(worker_settings, events))
    try:
        for fraction in (0.25, 0.55):
            reached = await wait_committed(worker_settings, int(EVENTS * fraction), timeout=90)
            assert reached >= int(EVENTS * fraction), _log_tail(worker.log_path)
            await asyncio.sleep(0.35)  # let a batch be inserted but not yet committed
            worker.kill()
            worker.start()
        await producing
        assert await end_offsets(worker_settings) == EVENTS
        reached = await wait_committed(worker_settings, EVENTS, timeout=120)
        assert reached == EVENTS, _log_tail(worker.log_path)
        replayed_and_dropped = worker.metric(
            'feedgrid_sink_duplicates_total{table="access_events"}'
        )
    finally:
        producing.cancel()
        exit_code = worker.stop()
    assert exit_code == 0, _log_tail(worker.log_path)

    count, distinct = query(
        worker_settings, "SELECT count(), uniqExact(event_id) FROM access_events"
    )[0]
    assert (count, distinct) == (EVENTS, EVENTS)
    retrievals, total_bytes = query(
        worker_settings, "SELECT sum(retrievals), sum(bytes) FROM usage_feeds_minute"
    )[0]
    assert retrievals == EVENTS // 2
    assert total_bytes == sum(1_000 + index for index in range(EVENTS // 2))
    print(
        f"events replayed after the last kill and dropped as duplicates: {replayed_and_dropped:.0f}"
    )


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""
