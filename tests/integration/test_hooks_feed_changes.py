"""The hooks follow feed changes: a token opens its feed where the feed is now, never the feed
that now sits at the feed's old media path; a refused attempt is audited under the owner of
the feed at the path. On one replica and on two replicas following each other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.access_world import (
    LEGAL_BASIS,
    POLICE,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    camera_body,
    gateway_path,
    register_feed,
)

pytestmark = pytest.mark.kafka

Ask = Callable[[httpx.AsyncClient, World, str, str], Awaitable[tuple[bool, str]]]


async def _mediamtx(
    http: httpx.AsyncClient, world: World, path: str, token: str
) -> tuple[bool, str]:
    body = {"user": "", "password": "", "token": token, "ip": "127.0.0.1", "action": "read",
            "path": path, "protocol": "rtmp", "id": None, "query": ""}  # fmt: skip
    answer = await http.post(
        "/v1/hooks/mediamtx/auth", json=body, headers=world.auth(TRANSPORT, "gateway")
    )
    return answer.status_code == 200, answer.json()["code"] if answer.content else "allowed"


async def _zlmediakit(
    http: httpx.AsyncClient, world: World, path: str, token: str
) -> tuple[bool, str]:
    app, stream = path.split("/", 1)
    body = {"schema": "rtmp", "vhost": "__defaultVhost__", "app": app, "stream": stream,
            "params": f"token={token}", "ip": "127.0.0.1", "port": 50000, "id": "9",
            "mediaServerId": "zlm-1"}  # fmt: skip
    answer = await http.post(
        "/v1/hooks/zlmediakit/on_play", json=body, headers=world.auth(TRANSPORT, "gateway")
    )
    code = answer.json()["code"]
    return code == 0, "allowed" if code == 0 else answer.json()["msg"]


async def _nginx(http: httpx.AsyncClient, world: World, path: str, token: str) -> tuple[bool, str]:
    app, name = path.split("/", 1)
    form = {"call": "play", "addr": "127.0.0.1", "clientid": "7", "app": app, "name": name,
            "tcUrl": f"rtmp://127.0.0.1:1935/{app}", "token": token}  # fmt: skip
    answer = await http.post(
        "/v1/hooks/nginx-rtmp/on_play", data=form, headers=world.auth(TRANSPORT, "gateway")
    )
    return answer.status_code == 200, answer.json()["code"] if answer.content else "allowed"


HOOKS: dict[str, Ask] = {"mediamtx": _mediamtx, "zlmediakit": _zlmediakit, "nginx-rtmp": _nginx}


async def _compact_token(world: World, feed: str) -> str:
    answer = await world.request(URBAN, feed_ids=[world.feed_id(feed)], actions=["live"])
    grant_id = answer["feeds"][0]["grant_id"]
    assert grant_id, answer
    retrieval = await world.retrieval(URBAN, grant_id)
    assert retrieval.status_code == 200, retrieval.text
    return str(retrieval.json()["feeds"][0]["compact_token"])


async def _move(world: World, feed: str, media_path: str) -> None:
    feed_id = world.feed_id(feed)
    current = await world.client.get(f"/v1/feeds/{feed_id}")
    moved = await world.client.patch(
        f"/v1/feeds/{feed_id}",
        json={"stream": {"media_path": media_path}},
        headers={**world.auth(TRANSPORT, "dept_admin"), "If-Match": str(current.json()["version"])},
    )
    assert moved.status_code == 200, moved.text
    world.feeds[feed] = moved.json()


async def _every_hook(
    http: httpx.AsyncClient, world: World, path: str, token: str
) -> dict[str, tuple[bool, str]]:
    return {name: await ask(http, world, path, token) for name, ask in HOOKS.items()}


async def _swap_paths_and_check(world: World, hooks_client: httpx.AsyncClient) -> None:
    """eb (URBAN) holds a grant on tb's (TRANSPORT) unconditional feed U; one play check
    caches U's path; tb moves U away and its not_shared feed N onto U's old path."""
    token = await _compact_token(world, "unconditional")
    old_path = gateway_path(world, "unconditional")
    assert all(
        allowed for allowed, _ in (await _every_hook(hooks_client, world, old_path, token)).values()
    )

    await _move(world, "unconditional", f"{TRANSPORT}/cam4-moved")
    await _move(world, "not_shared", old_path.split("/", 1)[1])
    new_path = gateway_path(world, "unconditional")
    fresh = await _compact_token(world, "unconditional")

    async def refused_everywhere() -> dict[str, tuple[bool, str]] | None:
        answers = {
            f"{name} {label}": verdict
            for label, presented in (("old token", token), ("fresh token", fresh))
            for name, verdict in (
                await _every_hook(hooks_client, world, old_path, presented)
            ).items()
        }
        if all(verdict == (False, "token_for_another_feed") for verdict in answers.values()):
            return None
        return answers

    await _eventually(refused_everywhere)
    # ... while the token opens its feed where it is now, on every hook
    answers = await _every_hook(hooks_client, world, new_path, fresh)
    assert all(allowed for allowed, _ in answers.values()), answers

    retired = await world.client.delete(
        f"/v1/feeds/{world.feed_id('unconditional')}", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert retired.status_code in (200, 204), retired.text

    async def retired_refused() -> dict[str, tuple[bool, str]] | None:
        answers = await _every_hook(hooks_client, world, new_path, fresh)
        return None if not any(allowed for allowed, _ in answers.values()) else answers

    await _eventually(retired_refused)


async def _eventually(still_wrong: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (wrong := await still_wrong()) is not None:
        assert asyncio.get_running_loop().time() < deadline, f"still {wrong}"
        await asyncio.sleep(0.2)


async def test_a_compact_token_never_opens_the_feed_moved_onto_its_feeds_old_path(
    client: httpx.AsyncClient,
) -> None:
    world = await build_world(client)
    await _swap_paths_and_check(world, client)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_path_swap_on_one_replica_closes_the_old_path_on_the_other(
    settings: Settings,
) -> None:
    following = settings.model_copy(update={"index_follow": True})
    async with (
        running_client(following) as first,
        running_client(following.model_copy(update={"relay_enabled": False})) as second,
    ):
        world = await build_world(first)
        await _swap_paths_and_check(world, second)


async def test_a_wrong_feed_attempt_is_audited_under_the_owner_of_the_feed_at_the_path(
    client: httpx.AsyncClient,
) -> None:
    world = await build_world(client)
    token = await _compact_token(world, "unconditional")  # a grant on TRANSPORT's feed
    police_path = gateway_path(world, "police_camera")
    for name, ask in HOOKS.items():
        allowed, code = await ask(client, world, police_path, token)
        assert (allowed, code) == (False, "token_for_another_feed"), name
    await world.runtime.access.hook_events.flush()

    seen_by_police = await client.get(
        "/v1/audit?event_type=feedgrid.retrieval.denied", headers=world.auth(POLICE, "auditor")
    )
    entries = seen_by_police.json()["entries"]
    assert len(entries) == len(HOOKS), entries
    for entry in entries:
        assert entry["feed_id"] == world.feed_id("police_camera")
        assert entry["owner_department"] == POLICE
        assert entry["requester_department"] == URBAN
    seen_by_transport = await client.get(
        "/v1/audit?event_type=feedgrid.retrieval.denied", headers=world.auth(TRANSPORT, "auditor")
    )
    assert seen_by_transport.json()["entries"] == []


async def test_a_retired_feed_is_never_the_feed_at_a_path(client: httpx.AsyncClient) -> None:
    """Two feeds once at one path: the retired one is not named in the refusal's audit."""
    world = await build_world(client)
    path = world.feeds["not_shared"]["stream"]["media_path"]
    body = camera_body(TRANSPORT, 90, {"class": "not_shared", "legal_basis": LEGAL_BASIS})
    body["stream"]["media_path"] = path
    later = await register_feed(client, body)
    retired = await client.delete(
        f"/v1/feeds/{world.feed_id('not_shared')}", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert retired.status_code in (200, 204), retired.text
    allowed, code = await _mediamtx(client, world, f"live/{path}", "garbage")
    assert (allowed, code) == (False, "token_malformed")
    await world.runtime.access.hook_events.flush()
    entries = (await client.get("/v1/audit?event_type=feedgrid.retrieval.denied")).json()["entries"]
    assert [(entry["feed_id"], entry["owner_department"]) for entry in entries] == [
        (later["id"], TRANSPORT)
    ]
