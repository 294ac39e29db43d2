"""Owners told: webhook subscriptions, delivered to a real receiver in another process.

The receiver (tests/webhook_receiver.py) checks each Standard Webhooks signature with its own
copy of the secret and logs every delivery to disk before it answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry_api.feeds.liveness import Liveness, LivenessApplier
from registry_api.subscriptions.signing import new_secret
from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.access_world import (
    ENVIRONMENT,
    POLICE,
    TRANSPORT,
    URBAN,
    World,
    build_world,
)
from tests.integration.hostile_support import changed_tables, registry_state
from tests.integration.webhook_support import (
    Receiver,
    deliveries,
    subscribe,
    wait_until,
    with_quick_notify,
)

pytestmark = pytest.mark.kafka

BURST = 24
KILLED_AT = 8
REVOKED = 4


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(with_quick_notify(settings)) as http:
        yield http


def genuine(receiver: Receiver) -> dict[str, list[dict[str, Any]]]:
    """What the receiver accepted, by webhook-id (a list: a duplicate shows as a second entry)."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in receiver.received():
        if record["valid"]:
            by_id[record["id"]].append(json.loads(record["body"]))
    return by_id


async def _revoked_grants(world: World, count: int) -> list[str]:
    grants = []
    for _ in range(count):
        granted = await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
        grant_id = granted["feeds"][0]["grant_id"]
        revoked = await world.client.post(
            f"/v1/grants/{grant_id}/revoke",
            json={"reason": "incident closed"},
            headers=world.auth(URBAN, "dept_admin"),
        )
        assert revoked.status_code == 200, revoked.text
        grants.append(grant_id)
    return grants


async def test_a_receiver_killed_during_a_burst_gets_every_notification_after_its_restart(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    world = await build_world(client)
    receiver = Receiver(tmp_path / "received.jsonl").start()
    try:
        owner = await subscribe(
            client,
            world.auth(TRANSPORT, "dept_admin"),
            receiver,
            ["request.pending", "grant.revoked"],
        )
        holder = await subscribe(
            client, world.auth(URBAN, "dept_admin"), receiver, ["feed.offline"]
        )
        requester = await subscribe(
            client, world.auth(ENVIRONMENT, "dept_admin"), receiver, ["request.decided"]
        )
        assert owner["secret"] == receiver.secret and owner["department"] == TRANSPORT
        requests = []
        due: dict[str, str] = {}  # each request's due time, as the API answered it
        for number in range(BURST):
            if number == KILLED_AT:
                receiver.kill()
            made = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
            assert made["status"] == "pending", made
            requests.append(made["id"])
            due[made["id"]] = made["feeds"][0]["due_at"]
        revoked = await _revoked_grants(world, REVOKED)
        # An emergency grant in force at once, waiting for the owner's review: the owner hears.
        emergency = await world.request(
            POLICE,
            feed_ids=[world.feed_id("conditional")],
            purpose="armed robbery pursuit",
            emergency=True,
            emergency_reason="suspect fleeing across the bridge",
        )
        assert emergency["feeds"][0]["review_required"], emergency
        # The owner answers three of them: the requester is told of each answer.
        for request_id, verb in zip(requests, ("approve", "approve", "deny"), strict=False):
            answered = await client.post(
                f"/v1/access-requests/{request_id}/{verb}",
                json={"comment": "seen"},
                headers=world.auth(TRANSPORT, "dept_admin"),
            )
            assert answered.status_code == 200, answered.text
        # A feed goes offline while URBAN holds a live grant on it.
        held = await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
        applier = next(c for c in world.runtime.components if isinstance(c, LivenessApplier))
        assert await applier.apply(
            [Liveness(world.feed_id("unconditional"), True, "offline", None)]
        )

        async def failing() -> bool:
            status = (await client.get(f"/v1/subscriptions/{owner['id']}")).json()["status"]
            return bool(status["consecutive_failures"] > 0 and status["pending"] > 0)

        await wait_until(failing, what="failed attempts while the receiver is down")
        status = (await client.get(f"/v1/subscriptions/{owner['id']}")).json()["status"]
        assert status["last_status"] == 0 and status["next_attempt_at"] is not None, status
        assert "no answer" in status["last_error"], status

        receiver.start()  # the same port, the same log

        async def all_delivered() -> bool:
            page = await deliveries(client, owner["id"])
            return len(page["deliveries"]) == BURST + REVOKED + 1 and all(
                item["state"] == "delivered" for item in page["deliveries"]
            )

        await wait_until(all_delivered, timeout=60, what="every delivery delivered")
        await wait_until(
            lambda: _delivered(client, holder["id"], 1), what="the offline notice delivered"
        )
        await wait_until(
            lambda: _delivered(client, requester["id"], 3), what="the decisions delivered"
        )
    finally:
        receiver.kill()

    page = await deliveries(client, owner["id"])
    sent = {item["message_id"]: item for item in page["deliveries"]}
    got = genuine(receiver)
    offline_id = (await deliveries(client, holder["id"]))["deliveries"][0]["message_id"]
    decided_ids = {
        item["message_id"] for item in (await deliveries(client, requester["id"]))["deliveries"]
    }
    # Every notification arrived; duplicates (if any) carry the same id and the same body.
    assert set(got) == set(sent) | {offline_id} | decided_ids
    assert all(all(body == bodies[0] for body in bodies) for bodies in got.values())
    assert not [record for record in receiver.received() if not record["valid"]]
    pending = [bodies[0] for bodies in got.values() if bodies[0]["type"] == "request.pending"]
    [review] = [body for body in pending if body["data"]["review"]]
    assert review["data"]["request_id"] == emergency["id"] and review["data"]["emergency"]
    pending.remove(review)
    assert sorted(body["data"]["request_id"] for body in pending) == sorted(requests)
    assert all(body["data"]["feed_count"] == 1 for body in pending)
    # The due time the request was answered with (known before its rows were written).
    assert all(
        datetime.fromisoformat(body["data"]["due_at"])
        == datetime.fromisoformat(due[body["data"]["request_id"]])
        for body in pending
    )
    revocations = [bodies[0] for bodies in got.values() if bodies[0]["type"] == "grant.revoked"]
    assert sorted(body["data"]["grant_id"] for body in revocations) == sorted(revoked)
    decided = sorted(
        (got[message_id][0]["data"] for message_id in decided_ids), key=lambda d: d["request_id"]
    )
    answered_ids = sorted(requests[:3])
    assert [item["request_id"] for item in decided] == answered_ids
    assert sorted(len(item["granted"]["feed_ids"]) for item in decided) == [0, 1, 1]
    assert all(item["decided_by"].startswith("key:") for item in decided)
    [offline] = got[offline_id]
    assert offline["type"] == "feed.offline"
    assert offline["data"]["feeds"] == [
        {
            "feed_id": world.feed_id("unconditional"),
            "owner_department": TRANSPORT,
            "grant_ids": [held["feeds"][0]["grant_id"]],
            "grant_count": 1,
        }
    ]
    # The outage shows in the attempts, the status and the metrics.
    assert any(item["attempts"] > 1 for item in sent.values())
    status = (await client.get(f"/v1/subscriptions/{owner['id']}")).json()["status"]
    assert status["delivered"] == BURST + REVOKED + 1 and status["failed"] == 0, status
    assert status["consecutive_failures"] == 0 and status["last_status"] == 204, status
    metrics = (await client.get("/metrics")).text
    assert 'feedgrid_webhook_attempts_total{outcome="retry"}' in metrics
    assert 'feedgrid_webhook_notifications_total{kind="request.pending"}' in metrics


async def _delivered(client: httpx.AsyncClient, subscription_id: str, count: int) -> bool:
    items = (await deliveries(client, subscription_id))["deliveries"]
    return sum(item["state"] == "delivered" for item in items) == count


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # logic, not storage
async def test_a_receiver_with_another_secret_detects_the_bad_signature(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    world = await build_world(client)
    receiver = Receiver(tmp_path / "received.jsonl", secret=new_secret()).start()
    try:
        headers = world.auth(TRANSPORT, "dept_admin")
        created = await client.post(
            "/v1/subscriptions",
            json={"url": receiver.url, "kinds": ["request.pending"], "secret": new_secret()},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        subscription = created.json()
        pinged = await client.post(f"/v1/subscriptions/{subscription['id']}/ping", headers=headers)
        assert pinged.status_code == 202, pinged.text

        async def set_aside() -> bool:
            items = (await deliveries(client, subscription["id"], headers))["deliveries"]
            return bool(items) and items[0]["state"] == "failed"

        await wait_until(set_aside, what="the delivery set aside")
    finally:
        receiver.kill()
    [record] = receiver.received()
    assert (record["valid"], record["problem"]) == (False, "bad signature")
    [item] = (await deliveries(client, subscription["id"], headers))["deliveries"]
    assert (item["attempts"], item["last_status"]) == (1, 401), item  # 4xx: not retried
    assert "bad signature" in item["last_error"] and "not retried" in item["last_error"]
    status = (await client.get(f"/v1/subscriptions/{subscription['id']}", headers=headers)).json()
    assert status["status"]["failed"] == 1 and status["status"]["last_status"] == 401
    assert "secret" not in status


REFUSED_URLS = {
    "http://hooks.example.org/feedgrid": "url_refused",  # plain http off loopback
    "https://169.254.169.254/latest/meta-data": "url_refused",  # cloud metadata
    "https://[fe80::1]/hook": "url_refused",  # link-local
    "https://[::ffff:169.254.169.254]/": "url_refused",  # the same, IPv4-mapped
    "https://metadata.google.internal/computeMetadata/v1": "url_refused",
    "https://user:pass@hooks.example.org/": "url_refused",
    "ftp://hooks.example.org/": "url_refused",
    "https://hooks.example.org/" + "a" * 2100: "invalid_request",  # longer than 2048
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # logic, not storage
async def test_subscriptions_refuse_urls_feedgrid_must_not_call(
    client: httpx.AsyncClient,
) -> None:
    world = await build_world(client)
    before = await registry_state(world.runtime)
    for url, code in REFUSED_URLS.items():
        response = await client.post(
            "/v1/subscriptions",
            json={"url": url, "kinds": ["request.pending"]},
            headers=world.auth(TRANSPORT, "dept_admin"),
        )
        assert response.status_code == 422, (url, response.text)
        assert response.json()["code"] == code, (url, response.text)
    assert changed_tables(before, await registry_state(world.runtime)) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # logic, not storage
async def test_a_subscription_is_made_by_the_department_admin_and_its_secret_shown_once(
    client: httpx.AsyncClient,
) -> None:
    world = await build_world(client)
    body = {"url": "https://hooks.lz-jtj.example/feedgrid", "kinds": ["request.overdue"]}
    for role in ("requester", "auditor", "gateway", "operator"):
        refused = await client.post(
            "/v1/subscriptions", json=body, headers=world.auth(TRANSPORT, role)
        )
        assert refused.status_code == 403, (role, refused.text)
    bad_secret = await client.post(
        "/v1/subscriptions",
        json={**body, "secret": "whsec_" + "A" * 31 + "!"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert bad_secret.status_code == 422, bad_secret.text
    made = await client.post(
        "/v1/subscriptions", json=body, headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert secret.startswith("whsec_")
    listed = await client.get("/v1/subscriptions", headers=world.auth(TRANSPORT, "dept_admin"))
    one = await client.get(f"/v1/subscriptions/{made.json()['id']}")
    assert secret not in listed.text and secret not in one.text
    assert [item["id"] for item in listed.json()] == [made.json()["id"]]
    audit = await client.get("/v1/audit", params={"event_type": "feedgrid.subscription.created"})
    [entry] = audit.json()["entries"]
    assert entry["owner_department"] == TRANSPORT and secret not in audit.text
    deleted = await client.delete(
        f"/v1/subscriptions/{made.json()['id']}", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert deleted.status_code == 204
    gone = await client.get(f"/v1/subscriptions/{made.json()['id']}")
    assert gone.status_code == 404
    await asyncio.sleep(0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # logic, not storage
async def test_an_endpoint_that_never_answers_holds_up_no_other(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    world = await build_world(client)
    # Accepts connections (the kernel does) and never answers: each attempt waits its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    receiver = Receiver(tmp_path / "received.jsonl").start()
    try:
        stuck = await client.post(
            "/v1/subscriptions",
            json={
                "url": f"http://127.0.0.1:{silent.getsockname()[1]}/feedgrid",
                "kinds": ["request.pending"],
            },
            headers=world.auth(TRANSPORT, "dept_admin"),
        )
        assert stuck.status_code == 201, stuck.text
        for _ in range(20):  # more than every attempt the dispatcher runs at once
            await client.post(f"/v1/subscriptions/{stuck.json()['id']}/ping")
        await asyncio.sleep(0.2)  # the silent endpoint's attempts are under way
        good = await subscribe(
            client, world.auth(ENVIRONMENT, "dept_admin"), receiver, ["request.decided"]
        )
        began = time.monotonic()
        await client.post(f"/v1/subscriptions/{good['id']}/ping")
        await wait_until(lambda: _delivered(client, good["id"], 1), what="the good ping")
        waited = time.monotonic() - began
    finally:
        receiver.kill()
        silent.close()
    timeout = world.runtime.settings.notify.attempt_timeout_seconds
    assert waited < timeout / 2, f"waited {waited:.2f} s behind a silent endpoint"
    [record] = receiver.received()
    assert record["valid"] and json.loads(record["body"])["type"] == "ping"
