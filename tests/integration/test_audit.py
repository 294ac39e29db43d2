"""The audit log: every access event is a link of a hash chain in the registry database, the
same event reaches Kafka, and the chain shows any altered or removed row."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text

from schemas.events import ACCESS_EVENT_TYPES, AccessEventData, CloudEvent, EventType
from schemas.settings import Settings
from schemas.topics import ACCESS_EVENTS, topic_name
from tests.integration.access_world import (
    ENVIRONMENT,
    POLICE,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    gateway_path,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await build_world(client)


async def _every_kind_of_event(world: World) -> None:
    """Requests (granted, pending, denied), an approval, a denial, a revocation, retrievals
    allowed, denied and ended: every access event type at least once."""
    granted = await world.request(
        URBAN, feed_ids=[world.feed_id("unconditional"), world.feed_id("not_shared")]
    )
    grant_id = next(item["grant_id"] for item in granted["feeds"] if item["grant_id"])
    pending = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
    await world.client.post(
        f"/v1/access-requests/{pending['id']}/approve",
        json={},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    refused = await world.request(
        ENVIRONMENT, feed_ids=[world.feed_id("conditional")], purpose="other"
    )
    await world.client.post(
        f"/v1/access-requests/{refused['id']}/deny",
        json={},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    token = (await world.retrieval(URBAN, grant_id)).json()["feeds"][0]["token"]
    path = gateway_path(world, "unconditional")
    assert (await world.hook(path, token)).status_code == 200
    assert (await world.hook(path, "not-a-token")).status_code == 403
    app, stream = path.split("/", 1)
    await world.client.post(
        "/v1/hooks/zlmediakit/on_flow_report",
        json={
            "totalBytes": 10,
            "duration": 1,
            "player": True,
            "app": app,
            "stream": stream,
            "params": f"token={token}",
            "id": "1",
        },
        headers=world.auth(TRANSPORT, "gateway"),
    )
    await world.client.post(
        f"/v1/grants/{grant_id}/revoke",
        json={"reason": "done"},
        headers=world.auth(URBAN, "dept_admin"),
    )
    await world.runtime.access.hook_events.flush()


async def _audit(world: World, **params: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (
            await world.client.get(
                "/v1/audit", params={**params, "after_seq": after, "limit": 1000}
            )
        ).json()
        entries.extend(page["entries"])
        if page["next_after_seq"] is None:
            return entries
        after = page["next_after_seq"]


async def test_every_decision_approval_revocation_and_retrieval_is_audited_in_a_verified_chain(
    world: World,
) -> None:
    await _every_kind_of_event(world)
    entries = await _audit(world)
    # Every access event type but escalation (the deadline keeper's, test_deadlines.py), and
    # the issue of the world's API keys (key changes are audited too).
    expected = (set(ACCESS_EVENT_TYPES) - {EventType.ACCESS_ESCALATED}) | {EventType.API_KEY_ISSUED}
    assert {entry["event_type"] for entry in entries} == expected
    assert [entry["seq"] for entry in entries] == list(range(1, len(entries) + 1))
    assert all(
        entries[i]["previous_hash"] == entries[i - 1]["entry_hash"] for i in range(1, len(entries))
    )
    verified = (await world.client.get("/v1/audit/verify")).json()
    assert verified["ok"] and verified["entries_checked"] == len(entries)


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("UPDATE audit_log SET reason = 'conditions_met' WHERE seq = 3", "altered_entry"),
        ("UPDATE audit_log SET data = '{}' WHERE seq = 3", "altered_entry"),
        ("DELETE FROM audit_log WHERE seq = 3", "missing_entry"),
    ],
)
async def test_audit_verification_reports_the_first_altered_or_removed_row(
    world: World, tamper: str, problem: str
) -> None:
    await _every_kind_of_event(world)
    async with world.runtime.engine.begin() as connection:
        await connection.execute(text(tamper))
    verified = (await world.client.get("/v1/audit/verify")).json()
    assert not verified["ok"]
    assert (verified["first_broken_seq"], verified["problem"]) == (3, problem)
    assert verified["entries_checked"] == 2


async def test_audit_verification_reports_removed_newest_rows(world: World) -> None:
    await _every_kind_of_event(world)
    last = (await world.client.get("/v1/audit/verify")).json()["last_seq"]
    async with world.runtime.engine.begin() as connection:
        await connection.execute(text("DELETE FROM audit_log WHERE seq >= :seq"), {"seq": last - 1})
    verified = (await world.client.get("/v1/audit/verify")).json()
    assert (verified["ok"], verified["first_broken_seq"], verified["problem"]) == (
        False,
        last - 1,
        "truncated",
    )


async def test_a_departments_auditor_sees_only_its_departments_events(world: World) -> None:
    await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
    await world.request(POLICE, feed_ids=[world.feed_id("police_camera")])
    urban = await world.client.get("/v1/audit", headers=world.auth(URBAN, "auditor"))
    assert urban.status_code == 200
    departments = {
        (entry["requester_department"], entry["owner_department"])
        for entry in urban.json()["entries"]
        if entry["event_type"] in ACCESS_EVENT_TYPES
    }
    assert departments == {(URBAN, TRANSPORT)}
    # Besides its access events, the issue of its own keys (no other department's).
    assert {
        (entry["event_type"], entry["owner_department"])
        for entry in urban.json()["entries"]
        if entry["event_type"] not in ACCESS_EVENT_TYPES
    } == {(EventType.API_KEY_ISSUED, URBAN)}
    owner = (await world.client.get("/v1/audit", headers=world.auth(TRANSPORT, "auditor"))).json()[
        "entries"
    ]
    assert {
        entry["requester_department"]
        for entry in owner
        if entry["event_type"] in ACCESS_EVENT_TYPES
    } == {URBAN}
    for role in ("requester", "dept_admin", "gateway"):
        refused = await world.client.get("/v1/audit", headers=world.auth(URBAN, role))
        assert refused.status_code == 403
    assert (
        await world.client.get("/v1/audit/verify", headers=world.auth(URBAN, "auditor"))
    ).json()["ok"]


async def _consume_access_events(
    settings: Settings, expected: set[str], timeout: float = 30.0
) -> dict[str, CloudEvent]:
    consumer = AIOKafkaConsumer(
        topic_name(settings.topic_prefix, ACCESS_EVENTS),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
    )
    await consumer.start()
    seen: dict[str, CloudEvent] = {}
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not expected <= set(seen) and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    event = CloudEvent.from_bytes(message.value)
                    assert message.key == (event.subject or "").encode()
                    seen[str(event.id)] = event
    finally:
        await consumer.stop()
    return seen


async def test_every_access_event_reaches_kafka_with_the_audit_entrys_id(
    world: World, settings: Settings
) -> None:
    await _every_kind_of_event(world)
    # Access events only: key changes are audited but travel on no topic.
    entries = [entry for entry in await _audit(world) if entry["event_type"] in ACCESS_EVENT_TYPES]
    expected = {entry["event_id"] for entry in entries}
    delivered = await _consume_access_events(settings, expected)
    assert expected <= set(delivered), (
        f"{len(expected - set(delivered))} events never reached Kafka"
    )
    by_id = {entry["event_id"]: entry for entry in entries}
    for event_id in expected:
        event = delivered[event_id]
        entry = by_id[event_id]
        assert event.type == entry["event_type"]
        data = AccessEventData.model_validate(event.data)
        assert data.model_dump(mode="json") == entry["data"]
        assert event.subject == data.feed_id
