"""One hook call can never stop the auditing of the others: numbers past what the stores hold
are refused at the boundary, and an event the audit log cannot take is set aside (counted,
logged with its reason) while the rest of its batch is written and streamed."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from registry_api.audit.service import AccessEvent
from schemas.events import AccessEventData, CloudEvent, EventType
from schemas.settings import Settings
from schemas.topics import ACCESS_EVENTS, topic_name
from tests.integration.access_world import TRANSPORT, URBAN, World, build_world, gateway_path

pytestmark = pytest.mark.kafka

NORMAL_EVENTS = 1_000


async def _granted_token(world: World) -> str:
    answer = await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
    grant_id = answer["feeds"][0]["grant_id"]
    retrieval = await world.retrieval(URBAN, grant_id)
    return str(retrieval.json()["feeds"][0]["token"])


async def _streamed_ids(settings: Settings, expected: set[str], timeout: float = 60.0) -> set[str]:
    consumer = AIOKafkaConsumer(
        topic_name(settings.topic_prefix, ACCESS_EVENTS),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not expected <= seen and asyncio.get_running_loop().time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                seen.update(str(CloudEvent.from_bytes(message.value).id) for message in messages)
    finally:
        await consumer.stop()
    return seen


async def _audited_event_ids(world: World, event_type: str) -> list[str]:
    ids: list[str] = []
    after = 0
    while True:
        page = (
            await world.client.get(
                "/v1/audit", params={"event_type": event_type, "after_seq": after, "limit": 1000}
            )
        ).json()
        ids.extend(entry["event_id"] for entry in page["entries"])
        if page["next_after_seq"] is None:
            return ids
        after = page["next_after_seq"]


async def _wait_until_written(world: World, timeout: float = 30.0) -> None:
    """Waits for the writer's own background flushes (no help from the test)."""
    writer = world.runtime.access.hook_events
    deadline = asyncio.get_running_loop().time() + timeout
    while writer.waiting:
        assert asyncio.get_running_loop().time() < deadline, f"{writer.waiting} never written"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("total_bytes", [2**64, 2**63, -1])
async def test_a_flow_report_past_64_bits_is_refused_and_every_later_event_is_audited_and_streamed(
    client: httpx.AsyncClient, settings: Settings, total_bytes: int
) -> None:
    world = await build_world(client)
    token = await _granted_token(world)
    path = gateway_path(world, "unconditional")
    app, stream = path.split("/", 1)
    report = {"totalBytes": total_bytes, "duration": 5, "player": True, "ip": "127.0.0.1",
              "id": "149", "app": app, "stream": stream, "params": f"token={token}",
              "mediaServerId": "zlm-1"}  # fmt: skip
    answer = await client.post(
        "/v1/hooks/zlmediakit/on_flow_report", json=report, headers=world.auth(TRANSPORT, "gateway")
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_request"
    assert "totalBytes" in answer.json()["message"]

    for _ in range(NORMAL_EVENTS):
        assert (await world.hook(path, token)).status_code == 200
    await _wait_until_written(world)
    audited = await _audited_event_ids(world, "feedgrid.retrieval.started")
    assert len(audited) == NORMAL_EVENTS
    assert await _audited_event_ids(world, "feedgrid.retrieval.ended") == []
    streamed = await _streamed_ids(settings, set(audited))
    assert set(audited) <= streamed, f"{len(set(audited) - streamed)} never reached Kafka"


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_writer_sets_a_poison_event_aside_and_writes_the_rest(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """An event that slipped past validation (built without it) cannot be written: the writer
    finds it by bisecting its batch, refuses it with the reason, counts it and goes on."""
    world = await build_world(client)
    writer = world.runtime.access.hook_events
    refused_before = _metric("feedgrid_hook_events_refused_total")
    good = [
        AccessEvent(
            EventType.RETRIEVAL_ENDED,
            AccessEventData(feed_id=world.feed_id("unconditional"), bytes=index),
            "zlm-1",
        )  # fmt: skip
        for index in range(NORMAL_EVENTS)
    ]
    poison = AccessEvent(
        EventType.RETRIEVAL_ENDED,
        AccessEventData.model_construct(feed_id=world.feed_id("sensor"), bytes=2**64),
        "zlm-1",
    )
    for event in good[:400]:
        writer.add(event)
    writer.add(poison)
    for event in good[400:]:
        writer.add(event)
    assert _metric("feedgrid_hook_events_waiting") == NORMAL_EVENTS + 1

    await _wait_until_written(world)
    assert _metric("feedgrid_hook_events_waiting") == 0
    assert _metric("feedgrid_hook_events_refused_total") == refused_before + 1
    assert [refused.event for refused in writer.refused] == [poison]
    assert "64-bit" in writer.refused[0].reason

    audited = await _audited_event_ids(world, "feedgrid.retrieval.ended")
    assert len(audited) == NORMAL_EVENTS
    entries = (await client.get("/v1/audit", params={"limit": 1000})).json()
    assert world.feed_id("sensor") not in {entry["feed_id"] for entry in entries["entries"]}
    streamed = await _streamed_ids(settings, set(audited))
    assert set(audited) <= streamed
    verified = (await client.get("/v1/audit/verify")).json()
    assert verified["ok"], verified
