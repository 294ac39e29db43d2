"""Deadlines kept: the owner is reminded before the due time, escalated at it (once, however
many replicas run the keeper and however often they restart), and the requester is warned
before a grant ends; escalations are audited and counted in the decisions analytics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry_api.app import create_app
from registry_api.runtime import Runtime
from registry_api.subscriptions.deadlines import DeadlineKeeper
from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.access_world import ENVIRONMENT, TRANSPORT, URBAN, World, build_world
from tests.integration.streams_support import running_worker, wait_for_value
from tests.integration.webhook_support import (
    Receiver,
    deliveries,
    quick_notify,
    subscribe,
    wait_until,
    with_quick_notify,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(with_quick_notify(settings)) as http:
        yield http


def keeper_of(client: httpx.AsyncClient) -> DeadlineKeeper:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.deadlines is not None
    return runtime.deadlines


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def both(keepers: list[DeadlineKeeper], now: datetime) -> dict[str, int]:
    """One round of every keeper at once, at ``now``; what they did, summed."""
    rounds = await asyncio.gather(*(keeper.run_once(now) for keeper in keepers))
    return {step: sum(done[step] for done in rounds) for step in rounds[0]}


async def test_reminded_escalated_once_across_replicas_and_restarts_and_warned_before_the_end(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    world = await build_world(client)
    receiver = Receiver(tmp_path / "received.jsonl").start()
    try:
        owner = await subscribe(
            client,
            world.auth(TRANSPORT, "dept_admin"),
            receiver,
            ["request.due_soon", "request.overdue"],
        )
        city = await subscribe(client, {}, receiver, ["request.overdue"])  # the city admin's
        assert city["department"] is None
        holder = await subscribe(
            client, world.auth(URBAN, "dept_admin"), receiver, ["grant.expiring"]
        )
        pending = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
        due_at = moment(pending["feeds"][0]["due_at"])
        granted = await world.request(
            URBAN, feed_ids=[world.feed_id("unconditional")], duration_minutes=120
        )
        grant = (await client.get(f"/v1/grants/{granted['feeds'][0]['grant_id']}")).json()
        settings_two = with_quick_notify(settings)
        async with running_client(settings_two) as replica:
            keepers = [keeper_of(client), keeper_of(replica)]
            soon = await both(keepers, due_at - timedelta(hours=1))
            assert soon == {"escalated": 0, "due_soon": 1, "expiring": 0}, soon
            ending = await both(keepers, moment(grant["valid_until"]) - timedelta(minutes=5))
            assert ending == {"escalated": 0, "due_soon": 0, "expiring": 1}, ending
            late = due_at + timedelta(seconds=1)
            overdue = await both(keepers, late)
            assert overdue == {"escalated": 1, "due_soon": 0, "expiring": 0}, overdue
        # A restarted replica finds nothing left to do.
        async with running_client(settings_two) as restarted:
            again = await both([keeper_of(restarted), keeper_of(client)], late)
            assert again == {"escalated": 0, "due_soon": 0, "expiring": 0}, again

        async def told() -> bool:
            counts = [
                len((await deliveries(client, subscription["id"]))["deliveries"])
                for subscription in (owner, city, holder)
            ]
            delivered = sum(1 for record in receiver.received() if record["valid"])
            return counts == [2, 1, 1] and delivered >= 4

        await wait_until(told, what="the reminders and the escalation delivered")
    finally:
        receiver.kill()
    bodies = [json.loads(record["body"]) for record in receiver.received() if record["valid"]]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        by_type.setdefault(body["type"], []).append(body)
    [due_soon] = by_type["request.due_soon"]
    assert due_soon["data"]["request_id"] == pending["id"]
    assert moment(due_soon["data"]["due_at"]) == due_at
    overdue_bodies = by_type["request.overdue"]  # the owner's and the city's subscriptions
    assert len(overdue_bodies) == 2 and overdue_bodies[0] == overdue_bodies[1]
    assert overdue_bodies[0]["data"]["escalated"] is True
    assert overdue_bodies[0]["data"]["owner_department"] == TRANSPORT
    [expiring] = by_type["grant.expiring"]
    assert expiring["data"]["grant_id"] == grant["id"]
    assert expiring["data"]["feed_ids"] == [world.feed_id("unconditional")]
    audit = await client.get(
        "/v1/audit",
        params={"event_type": "feedgrid.access.escalated"},
        headers=world.auth(TRANSPORT, "auditor"),
    )
    [entry] = audit.json()["entries"]
    assert (entry["request_id"], entry["feed_id"]) == (pending["id"], world.feed_id("conditional"))
    assert (entry["actor"], entry["decision"], entry["reason"]) == (
        "deadline-keeper",
        "pending",
        "deadline_passed",
    )
    # Still pending: the owner may answer late, and that answer counts as late.
    request = await client.get(f"/v1/access-requests/{pending['id']}")
    assert request.json()["status"] == "pending"


async def test_escalations_are_counted_in_the_decisions_analytics(
    stream_settings: Settings,
) -> None:
    settings = stream_settings.model_copy(update={"notify": quick_notify()})
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application),
            base_url="http://feedgrid.test",
            headers={"Authorization": f"Bearer {settings.admin_token}"},
            timeout=60,
        ) as client:
            client.app = application  # type: ignore[attr-defined]
            async with running_worker(settings):
                world: World = await build_world(client)
                pending = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
                await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
                due_at = moment(pending["feeds"][0]["due_at"])
                done = await keeper_of(client).run_once(due_at + timedelta(seconds=1))
                assert done["escalated"] == 1
                stored = await wait_for_value(
                    settings,
                    "SELECT count() FROM access_events WHERE type = 'access.escalated'",
                    1,
                )
                assert stored == 1
                period = {
                    "from": (moment(pending["created_at"]) - timedelta(hours=1)).isoformat(),
                    "to": (moment(pending["created_at"]) + timedelta(hours=1)).isoformat(),
                }
                answer = (await client.get("/v1/analytics/decisions", params=period)).json()
                rows = {row["owner_department"]: row for row in answer["rows"]}
                assert rows[TRANSPORT]["escalated"] == 1 and answer["totals"]["escalated"] == 1
                assert rows[TRANSPORT]["pending"] == 1
                mine = await client.get(
                    "/v1/analytics/decisions",
                    params=period,
                    headers=world.auth(ENVIRONMENT, "requester"),
                )
                assert mine.json()["totals"]["escalated"] == 1  # the requester's side sees it
                csv = await client.get(
                    "/v1/analytics/decisions", params=period, headers={"Accept": "text/csv"}
                )
                assert "escalated" in csv.text.splitlines()[0]
