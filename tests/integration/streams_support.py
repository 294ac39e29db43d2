"""Helpers for the stream tests: settings, a worker in this process, events, waiting on ClickHouse.

Everything is real: the local Kafka broker, Faust, and chdb in the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.clickhouse import connect, disconnect
from infra.kafka_admin import ensure_topics
from schemas.events import (
    HEARTBEAT_EVENT_TYPE,
    SCHEMA_ACCESS_EVENT_V1,
    SCHEMA_FEED_METADATA_V1,
    SCHEMA_HEARTBEAT_V1,
    CloudEvent,
)
from schemas.settings import Settings, load_settings
from schemas.topics import ACCESS_EVENTS, FEED_METADATA, HEARTBEATS, topic_name
from streams.app import run_stream_worker
from streams.context import StreamContext, build_stream_context
from streams.tuning import StreamTuning, load_tuning

ADMIN_TOKEN = "test-admin-token-0123456789"


def make_settings(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, sqlite_template: Path | None = None
) -> Settings:
    database = tmp_path / "registry.db"
    if sqlite_template is not None and not database.exists():
        shutil.copy(sqlite_template, database)
    return load_settings(
        database_url=f"sqlite+aiosqlite:///{database}",
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=f"chdb://{tmp_path / 'analytics'}",
        admin_token=ADMIN_TOKEN,
        topic_prefix=topic_prefix,
        topic_partitions=3,
        signing_key_dir=tmp_path / "keys",
        var_dir=tmp_path / "var",
        embedded_worker=False,
        relay_idle_seconds=0.05,
    )


def fast_tuning(**overrides: Any) -> StreamTuning:
    values: dict[str, Any] = {
        "batch_size": 2_000,
        "flush_seconds": 0.2,
        "retry_initial_seconds": 0.1,
        "retry_max_seconds": 1.0,
        "heartbeat_silence_seconds": 3.0,
        "liveness_scan_seconds": 0.5,
        "harvest_feeds_per_minute": 5,
        "stream_buffer": 2_000,
    }
    values.update(overrides)
    return load_tuning(**values)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, tuning: StreamTuning | None = None
) -> AsyncIterator[StreamContext]:
    """The agents and the sink on this event loop, as in the embedded API process."""
    context = build_stream_context(settings, tuning or fast_tuning())
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_stream_worker(context, stop, started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
    assert started.is_set(), "the stream worker did not start"
    try:
        yield context
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def close_analytics(settings: Settings) -> None:
    disconnect(settings.clickhouse_url)


# ------------------------------------------------------------------------------ events


def gb_code(serial: int, industry: str = "00", region: str = "62010200") -> str:
    return f"{region}{industry}1310{serial:06d}"


def feed_document(
    feed_id: str,
    owner: str,
    *,
    kind: str = "camera",
    serial: int = 1,
    industry: str = "00",
    region: str = "62010200",
    sharing_class: str = "conditional",
    status: str = "online",
    revision: int = 1,
) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": feed_id,
        "kind": kind,
        "code": gb_code(serial, industry, region)
        if kind == "camera"
        else f"{owner}-aq-{serial:06d}",
        "owner": owner,
        "name": f"test feed {feed_id}",
        "location": {"type": "Point", "coordinates": [103.83, 36.06]},
        "sharing": {"class": sharing_class},
        "status": status,
        "version": 1,
        "revision": revision,
        "created_at": now,
        "updated_at": now,
        "retired": False,
    }


def feed_event(
    document: dict[str, Any], event_type: str = "feedgrid.feed.registered"
) -> CloudEvent:
    return CloudEvent(
        type=event_type,
        subject=document["id"],
        dataschema=SCHEMA_FEED_METADATA_V1,
        data=document,
    )


def access_event(
    event_type: str, feed_id: str, time: datetime | None = None, **data: Any
) -> CloudEvent:
    payload = {"feed_id": feed_id, **data}
    for key, value in list(payload.items()):
        if isinstance(value, datetime):
            payload[key] = value.isoformat()
    return CloudEvent(
        type=f"feedgrid.{event_type}",
        subject=feed_id,
        time=time or datetime.now(UTC),
        dataschema=SCHEMA_ACCESS_EVENT_V1,
        data=payload,
    )


def heartbeat_event(feed_id: str, seen_at: datetime, status: str = "online") -> CloudEvent:
    return CloudEvent(
        type=HEARTBEAT_EVENT_TYPE,
        subject=feed_id,
        time=seen_at,
        dataschema=SCHEMA_HEARTBEAT_V1,
        data={"feed_id": feed_id, "status": status, "seen_at": seen_at.isoformat()},
    )


@dataclass
class Retrieval:
    """One complete retrieval: started and ended events with the flow report."""

    feed_id: str
    requester_department: str
    requester_user: str
    grant_id: str
    started_at: datetime
    seconds: float
    bytes: int
    client_ip: str = "10.1.0.1"
    action: str = "live"

    def events(self) -> list[CloudEvent]:
        common = {
            "requester_department": self.requester_department,
            "requester_user": self.requester_user,
            "grant_id": self.grant_id,
            "token_id": f"tok-{self.grant_id}-{self.requester_user}",
            "action": self.action,
            "protocol": "rtsp",
            "media_server": "mediamtx-1",
            "client_ip": self.client_ip,
        }
        return [
            access_event("retrieval.started", self.feed_id, self.started_at, **common),
            access_event(
                "retrieval.ended",
                self.feed_id,
                self.started_at + timedelta(seconds=self.seconds),
                bytes=self.bytes,
                duration_seconds=self.seconds,
                **common,
            ),
        ]


def grant_issued(
    feed_id: str,
    grant_id: str,
    requester_department: str,
    valid_from: datetime,
    valid_until: datetime,
    actions: str = "live,playback",
    time: datetime | None = None,
) -> CloudEvent:
    return access_event(
        "grant.issued",
        feed_id,
        time or valid_from,
        grant_id=grant_id,
        requester_department=requester_department,
        action=actions,
        grant_valid_from=valid_from,
        grant_valid_until=valid_until,
    )


# ------------------------------------------------------------------------------ kafka


async def produce(
    settings: Settings, suffix: str, events: Iterable[CloudEvent | tuple[str, bytes]]
) -> int:
    """Publishes CloudEvents (keyed by subject) or raw (key, value) pairs to a topic."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, enable_idempotence=True
    )
    await producer.start()
    sent = 0
    try:
        deliveries = []
        for item in events:
            if isinstance(item, CloudEvent):
                key, value = (item.subject or "").encode(), item.to_bytes()
            else:
                key, value = item[0].encode(), item[1]
            deliveries.append(
                await producer.send(topic_name(settings.topic_prefix, suffix), value, key)
            )
            sent += 1
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return sent


async def read_topic(
    settings: Settings, suffix: str, at_least: int, timeout: float = 30
) -> list[Any]:
    """Every record of a topic from the beginning, once ``at_least`` arrived (or the timeout)."""
    consumer = AIOKafkaConsumer(
        topic_name(settings.topic_prefix, suffix),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < at_least and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for items in batch.values():
                records.extend(items)
    finally:
        await consumer.stop()
    return records


FEED_TOPIC, ACCESS_TOPIC, HEARTBEAT_TOPIC = FEED_METADATA, ACCESS_EVENTS, HEARTBEATS


# ------------------------------------------------------------------------------ clickhouse


def query(
    settings: Settings, sql: str, parameters: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in connect(settings.clickhouse_url).query(sql, parameters=parameters).result_rows
    ]


async def wait_for_value(
    settings: Settings,
    sql: str,
    expected: Any,
    timeout: float = 60,
    parameters: dict[str, Any] | None = None,
) -> Any:
    """Polls a one-value query until it returns ``expected``; returns the last value seen."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = (await asyncio.to_thread(query, settings, sql, parameters))[0][0]
        if value == expected:
            return value
        await asyncio.sleep(0.25)
    return value


async def counted(read: Callable[[], int], *, at_least: int, timeout: float = 10) -> int:
    """Polls a counter of this process until it reaches ``at_least``; returns the last value
    (lower if it never did: the caller's assertion then fails with it)."""
    deadline = time.monotonic() + timeout
    while (value := read()) < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return value


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def decode_json(value: bytes) -> Any:
    return orjson.loads(value)
