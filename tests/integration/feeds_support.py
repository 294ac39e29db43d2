"""Helpers of the feed registry tests: departments with keys, feed bodies, topic reading."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import func, select

from registry_api.outbox.models import OutboxMessage
from registry_api.runtime import Runtime
from schemas.events import (
    LIVENESS_CHANGED_EVENT_TYPE,
    LIVENESS_SEEN_EVENT_TYPE,
    SCHEMA_LIVENESS_V1,
    CloudEvent,
    LivenessData,
)
from schemas.settings import Settings
from schemas.topics import FEED_STATUS, topic_name

T = TypeVar("T")

POLICE = "lz-psb"
TRANSPORT = "lz-tb"
URBAN = "lz-cmb"
DEPARTMENTS = {
    POLICE: ("Public Security Bureau", "public_security"),
    TRANSPORT: ("Transport Bureau", "transport"),
    URBAN: ("Urban Management Bureau", "urban_management"),
}
ROLES = ("dept_admin", "requester", "gateway")
CENTRE = (103.8343, 36.0611)  # Lanzhou, Zhongshan bridge
METRES_PER_DEGREE_LAT = 110_950.0


def gb_code(serial: int, industry: str = "04", type_code: str = "132", network: str = "2") -> str:
    return f"62010200{industry}{type_code}{network}{serial:06d}"


def offset(east_m: float, north_m: float) -> list[float]:
    """A position ``east_m``/``north_m`` metres from the centre (flat approximation)."""
    import math

    return [
        CENTRE[0] + east_m / (METRES_PER_DEGREE_LAT * math.cos(math.radians(CENTRE[1]))),
        CENTRE[1] + north_m / METRES_PER_DEGREE_LAT,
    ]


def camera(
    owner: str, serial: int, *, at: list[float] | None = None, **changes: Any
) -> dict[str, Any]:
    code = changes.pop("code", gb_code(serial))
    body: dict[str, Any] = {
        "kind": "camera",
        "code": code,
        "owner": owner,
        "name": f"Test camera {serial}",
        "location": {"type": "Point", "coordinates": at or list(CENTRE)},
        "altitude": 1520.5,
        "fov": {"heading": 90.0, "angle": 60.0, "range_m": 100.0},
        "stream": {
            "protocol": "rtsp",
            "url": f"rtsp://10.14.{serial // 250}.{serial % 250 + 1}:554/Streaming/Channels/101",
            "media_path": f"{owner}/{code}",
        },
        "catalog": {
            "resource_name": f"Test camera {serial} live video",
            "resource_code": f"620100-T-{serial:07d}",
            "abstract": "A test camera",
            "format": "video/H.264",
            "classification": "theme",
            "update_cycle": "realtime",
            "open_to_public": False,
            "publish_date": "2024-05-01",
            "related_codes": [],
        },
        "sharing": {"class": "unconditional", "conditions": None, "legal_basis": None},
        "tags": ["road"],
    }
    body.update(changes)
    return body


def sensor(
    owner: str, serial: int, *, at: list[float] | None = None, **changes: Any
) -> dict[str, Any]:
    code = f"{owner}-aq-{serial:06d}"
    body: dict[str, Any] = {
        "kind": "sensor",
        "code": code,
        "owner": owner,
        "name": f"Air quality station {serial}",
        "location": {"type": "Point", "coordinates": at or list(CENTRE)},
        "stream": {
            "protocol": "mqtt",
            "url": f"mqtt://10.20.0.5:1883/aq/{serial:06d}",
            "media_path": f"{owner}/{code}",
        },
        "datastreams": [
            {"name": "pm25", "observed_property": "PM2.5 concentration", "unit": "ug/m3"}
        ],
        "sharing": {
            "class": "conditional",
            "conditions": {"departments": [POLICE], "actions": ["read"]},
        },
        "tags": ["air"],
    }
    body.update(changes)
    return body


def as_feature(body: dict[str, Any]) -> dict[str, Any]:
    properties = copy.deepcopy(body)
    location = properties.pop("location")
    return {"type": "Feature", "geometry": location, "properties": properties}


@dataclass
class City:
    client: httpx.AsyncClient
    keys: dict[tuple[str, str], str] = field(default_factory=dict)

    def as_(self, department: str, role: str = "dept_admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[(department, role)]}"}

    @property
    def runtime(self) -> Runtime:
        return self.client.app.state.runtime  # type: ignore[attr-defined,no-any-return]

    async def register(self, body: dict[str, Any], department: str | None = None) -> dict[str, Any]:
        headers = self.as_(department) if department else {}
        response = await self.client.post("/v1/feeds", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]


async def build_city(client: httpx.AsyncClient) -> City:
    city = City(client)
    for code, (name, kind) in DEPARTMENTS.items():
        created = await client.post(
            "/v1/departments", json={"code": code, "name": name, "kind": kind}
        )
        assert created.status_code == 201, created.text
        for role in ROLES:
            issued = await client.post(
                f"/v1/departments/{code}/api-keys", json={"name": role, "roles": [role]}
            )
            assert issued.status_code == 201, issued.text
            city.keys[(code, role)] = issued.json()["key"]
    return city


async def outbox_messages(
    runtime: Runtime, topic: str | None = None, *, unsent_only: bool = False
) -> int:
    """Events in the outbox (a row may bundle many)."""
    async with runtime.sessions() as session:
        statement = select(func.coalesce(func.sum(OutboxMessage.messages), 0))
        if topic is not None:
            statement = statement.where(OutboxMessage.topic == topic)
        if unsent_only:
            statement = statement.where(OutboxMessage.sent_at.is_(None))
        return int(await session.scalar(statement) or 0)


async def feed_count(runtime: Runtime) -> int:
    from registry_api.feeds.models import Feed

    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Feed)) or 0)


async def read_topic(
    bootstrap: str,
    prefix: str,
    suffix: str,
    *,
    until: int,
    timeout: float = 60.0,
    linger: float = 0.0,
) -> list[tuple[str, CloudEvent]]:
    """Every message of the topic from the beginning, until ``until`` distinct events arrived,
    and then for ``linger`` seconds more (whatever was published twice arrives then too)."""
    consumer = AIOKafkaConsumer(
        topic_name(prefix, suffix),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    received: list[tuple[str, CloudEvent]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < until and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    event = CloudEvent.from_bytes(message.value)
                    received.append((message.key.decode(), event))
                    seen.add(str(event.id))
        if linger:
            for messages in (await consumer.getmany(timeout_ms=int(linger * 1000))).values():
                received += [(m.key.decode(), CloudEvent.from_bytes(m.value)) for m in messages]
    finally:
        await consumer.stop()
    return received


async def wait_until_sent(runtime: Runtime, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while await outbox_messages(runtime, unsent_only=True):
        if time.monotonic() > deadline:
            raise AssertionError("the outbox was not drained in time")
        runtime.relay.notify()
        await asyncio.sleep(0.1)


def ids(items: Iterable[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


# ---------------------------------------------------------------------------- liveness


def liveness_event(
    feed_id: str,
    status: Literal["online", "offline"],
    *,
    changed: bool = True,
    last_seen: datetime | None = None,
    reason: str | None = "heartbeat",
) -> CloudEvent:
    """A feed-status event as the stream workers publish it."""
    data = LivenessData(
        feed_id=feed_id,
        status=status,
        previous_status=None,
        changed_at=last_seen if changed else None,
        last_seen=last_seen,
        reason=reason if changed else None,
    )
    return CloudEvent(
        type=LIVENESS_CHANGED_EVENT_TYPE if changed else LIVENESS_SEEN_EVENT_TYPE,
        subject=feed_id,
        dataschema=SCHEMA_LIVENESS_V1,
        data=data.model_dump(mode="json"),
    )


async def publish_feed_status(
    settings: Settings, messages: Sequence[tuple[str, CloudEvent | bytes]]
) -> None:
    """Puts (key, event or raw bytes) on the feed-status topic, in order, acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, message in messages:
            value = message if isinstance(message, bytes) else message.to_bytes()
            await producer.send_and_wait(
                topic_name(settings.topic_prefix, FEED_STATUS), value, key=key.encode()
            )
    finally:
        await producer.stop()


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 60.0) -> T:
    """The first truthy answer of ``check``, polled until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"still {answer!r} after {timeout} s")
        await asyncio.sleep(0.1)


async def go_live(city: City, feed_id: str, status: Literal["online", "offline"]) -> dict[str, Any]:
    """Has the registry apply a worker's transition of the feed (through feed-status) and
    returns the feed once the API shows it."""
    await publish_feed_status(city.runtime.settings, [(feed_id, liveness_event(feed_id, status))])

    async def shown() -> dict[str, Any] | None:
        document: dict[str, Any] = (await city.client.get(f"/v1/feeds/{feed_id}")).json()
        return document if document["status"] == status else None

    return await eventually(shown)
