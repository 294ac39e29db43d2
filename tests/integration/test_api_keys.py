"""Keys with a life cycle: listed, rotated with a grace period, revoked; a revoked key is
refused on every API replica within a second, media-server hooks included; all audited."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.access_world import TRANSPORT, URBAN, World, build_world, gateway_path

pytestmark = pytest.mark.kafka


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def key_id(key: str) -> str:
    return key.split("_", 2)[1]


async def whoami(client: httpx.AsyncClient, key: str) -> int:
    return (await client.get("/v1/whoami", headers=bearer(key))).status_code


async def hook_status(world: World, client: httpx.AsyncClient, gateway_key: str) -> int:
    """The media-server hook, authenticated by ``gateway_key``: 401 when the key is refused
    (otherwise 403, the retrieval token being no good)."""
    body = {"action": "read", "path": gateway_path(world, "unconditional"), "token": "x" * 40}
    response = await client.post("/v1/hooks/mediamtx/auth", json=body, headers=bearer(gateway_key))
    return response.status_code


async def refused_after(probe: asyncio.Task[float | None]) -> float:
    seconds = await asyncio.wait_for(probe, 5)
    assert seconds is not None
    return seconds


async def first_refusal(check: object, began: float, limit: float = 3.0) -> float | None:
    """Seconds from ``began`` until ``check()`` first answers 401 (polled every 20 ms)."""
    while time.monotonic() - began < limit:
        if await check() == 401:  # type: ignore[operator]
            return time.monotonic() - began
        await asyncio.sleep(0.02)
    return None


async def test_a_revoked_key_is_refused_on_every_replica_within_a_second_hooks_included(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    world = await build_world(client)
    gateway = world.keys[(TRANSPORT, "gateway")]
    requester = world.keys[(TRANSPORT, "requester")]
    admin = world.auth(TRANSPORT, "dept_admin")
    async with running_client(settings) as replica:
        # Replica 2 keeps both keys hot in its cache, as a busy media gateway would.
        stop = asyncio.Event()

        async def hammer() -> None:
            while not stop.is_set():
                await hook_status(world, replica, gateway)
                await whoami(replica, requester)
                await asyncio.sleep(0.005)

        hot = asyncio.create_task(hammer())
        try:
            assert await hook_status(world, replica, gateway) == 403
            assert await whoami(replica, requester) == 200
            await asyncio.sleep(0.5)
            for key in (gateway, requester):
                revoked = await client.post(
                    f"/v1/departments/{TRANSPORT}/api-keys/{key_id(key)}/revoke",
                    json={"reason": "laptop lost"},
                    headers=admin,
                )
                assert revoked.status_code == 200, revoked.text
                assert revoked.json()["state"] == "revoked"
            began = time.monotonic()
            on_hook = await first_refusal(lambda: hook_status(world, replica, gateway), began)
            on_route = await first_refusal(lambda: whoami(replica, requester), began)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await hot
        assert on_hook is not None and on_hook < 1.0, on_hook
        assert on_route is not None and on_route < 1.0, on_route
        print(
            f'{{"name": "api_key_revocation_seen_by_other_replica", "value": '
            f'{max(on_hook, on_route):.3f}, "unit": "s"}}'
        )
    # The replica that revoked refuses at once.
    assert await hook_status(world, client, gateway) == 401
    assert await whoami(client, requester) == 401
    again = await client.post(
        f"/v1/departments/{TRANSPORT}/api-keys/{key_id(gateway)}/revoke",
        json={"reason": "twice"},
        headers=admin,
    )
    assert again.status_code == 409 and again.json()["code"] == "already_revoked"
    audit = await client.get(
        "/v1/audit",
        params={"event_type": "feedgrid.api_key.revoked"},
        headers=world.auth(TRANSPORT, "auditor"),
    )
    entries = audit.json()["entries"]
    assert {entry["data"]["key_id"] for entry in entries} == {key_id(gateway), key_id(requester)}
    assert all(entry["reason"] == "laptop lost" for entry in entries)


async def test_a_rotated_key_works_at_once_and_the_old_one_for_its_grace_period(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    world = await build_world(client)
    old = world.keys[(TRANSPORT, "requester")]
    admin = world.auth(TRANSPORT, "dept_admin")
    path = f"/v1/departments/{TRANSPORT}/api-keys/{key_id(old)}/rotate"
    too_long = await client.post(
        path, json={"grace_seconds": settings.api_key_max_grace_seconds + 1}, headers=admin
    )
    assert too_long.status_code == 422 and too_long.json()["code"] == "grace_too_long"
    async with running_client(settings) as replica:
        assert await whoami(replica, old) == 200  # cached on replica 2
        rotated = await client.post(path, json={"grace_seconds": 2}, headers=admin)
        assert rotated.status_code == 200, rotated.text
        began = time.monotonic()
        answer = rotated.json()
        new = answer["new_key"]["key"]
        assert answer["old_key"]["state"] == "rotating"
        assert answer["old_key"]["replaced_by"] == answer["new_key"]["id"]
        assert answer["new_key"]["roles"] == ["requester"]
        for replica_client in (client, replica):
            assert await whoami(replica_client, new) == 200  # at once, everywhere
            assert await whoami(replica_client, old) == 200  # still, in its grace period
        again = await client.post(path, json={"grace_seconds": 0}, headers=admin)
        assert again.status_code == 409 and again.json()["code"] == "key_not_active"
        while time.monotonic() - began < 2.0:
            await asyncio.sleep(0.05)
        ended = await first_refusal(lambda: whoami(replica, old), time.monotonic())
        assert ended is not None and ended < 1.0, ended
        assert await whoami(client, old) == 401
        assert await whoami(replica, new) == 200
    listed = await client.get(f"/v1/departments/{TRANSPORT}/api-keys", headers=admin)
    assert listed.status_code == 200, listed.text
    states = {item["id"]: item["state"] for item in listed.json()}
    assert states[key_id(old)] == "expired" and states[answer["new_key"]["id"]] == "active"
    secrets = [new, old, *world.keys.values()]
    assert not [secret for secret in secrets if secret.split("_", 2)[2] in listed.text]
    assert all("key" not in item and "secret_hash" not in item for item in listed.json())
    audit = await client.get("/v1/audit", params={"event_type": "feedgrid.api_key.rotated"})
    [entry] = audit.json()["entries"]
    assert entry["data"]["new_key_id"] == answer["new_key"]["id"]
    assert entry["data"]["grace_seconds"] == 2 and entry["owner_department"] == TRANSPORT
    assert new.split("_", 2)[2] not in audit.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # logic, not storage
async def test_keys_are_managed_by_their_own_department_admin_only(
    client: httpx.AsyncClient,
) -> None:
    world = await build_world(client)
    target = key_id(world.keys[(TRANSPORT, "requester")])
    for role in ("requester", "auditor", "gateway", "operator", "dept_admin"):
        headers = world.auth(URBAN, role)
        listed = await client.get(f"/v1/departments/{TRANSPORT}/api-keys", headers=headers)
        assert listed.status_code == 403, (role, listed.text)
        for action, body in (("rotate", {"grace_seconds": 0}), ("revoke", {"reason": "x"})):
            response = await client.post(
                f"/v1/departments/{TRANSPORT}/api-keys/{target}/{action}",
                json=body,
                headers=headers,
            )
            assert response.status_code == 403, (role, action, response.text)
    # A key of another department named under TRANSPORT's path is no key of TRANSPORT's.
    urban_key = key_id(world.keys[(URBAN, "requester")])
    response = await client.post(
        f"/v1/departments/{TRANSPORT}/api-keys/{urban_key}/revoke",
        json={"reason": "not mine"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert response.status_code == 404 and response.json()["code"] == "unknown_key"
    assert await whoami(client, world.keys[(URBAN, "requester")]) == 200
    # A city_admin key held by a department is rotated by the city admin only.
    issued = await client.post(
        f"/v1/departments/{TRANSPORT}/api-keys", json={"name": "ops", "roles": ["city_admin"]}
    )
    strong = issued.json()["id"]
    refused = await client.post(
        f"/v1/departments/{TRANSPORT}/api-keys/{strong}/rotate",
        json={"grace_seconds": 0},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert refused.status_code == 403, refused.text
    rotated = await client.post(
        f"/v1/departments/{TRANSPORT}/api-keys/{strong}/rotate", json={"grace_seconds": 0}
    )
    assert rotated.status_code == 200, rotated.text
    assert await whoami(client, issued.json()["key"]) == 401  # no grace: refused at once
