"""Media-server hooks: MediaMTX (JSON), ZLMediaKit (JSON, code 0) and nginx-rtmp (form) decide
the same way for every token state, fast, and revocation reaches every replica within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from registry_api.app import create_app
from schemas.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.access_world import TRANSPORT, URBAN, World, build_world, gateway_path

pytestmark = pytest.mark.kafka


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await build_world(client)


async def _granted_token(
    world: World, feed: str, actions: list[str] | None = None, *, compact: bool = False
) -> tuple[str, str]:
    """A grant and its token: the JWT, or the compact form RTMP URLs carry."""
    answer = await world.request(URBAN, feed_ids=[world.feed_id(feed)], actions=actions or ["live"])
    grant_id = answer["feeds"][0]["grant_id"]
    assert grant_id, answer
    retrieval = (await world.retrieval(URBAN, grant_id)).json()["feeds"][0]
    return grant_id, retrieval["compact_token" if compact else "token"]


def _split(path: str) -> tuple[str, str]:
    app, name = path.split("/", 1)
    return app, name


async def ask_mediamtx(
    world: World, path: str, token: str | None, action: str
) -> tuple[bool, int, str]:
    mediamtx_action = {"live": "read", "playback": "playback"}[action]
    response = await world.hook(path, token, action=mediamtx_action)
    code = response.json()["code"] if response.content else "allowed"
    return response.status_code == 200, response.status_code, code


async def ask_zlmediakit(
    world: World, path: str, token: str | None, action: str
) -> tuple[bool, int, str]:
    app, stream = _split(path)
    body = {
        "schema": "rtsp",
        "vhost": "__defaultVhost__",
        "app": app,
        "stream": stream,
        "params": f"token={token}" if token else "",
        "ip": "127.0.0.1",
        "port": 50000,
        "id": "149",
        "mediaServerId": "zlm-1",
    }
    response = await world.client.post(
        "/v1/hooks/zlmediakit/on_play", json=body, headers=world.auth(TRANSPORT, "gateway")
    )
    answer = response.json()
    return (
        answer["code"] == 0,
        response.status_code,
        "allowed" if answer["code"] == 0 else answer["msg"],
    )


async def ask_nginx(
    world: World, path: str, token: str | None, action: str
) -> tuple[bool, int, str]:
    app, name = _split(path)
    form = {
        "call": "play",
        "addr": "127.0.0.1",
        "clientid": "7",
        "app": app,
        "flashVer": "LNX 9,0,124,2",
        "tcUrl": f"rtmp://127.0.0.1:1935/{app}",
        "name": name,
        "start": "-2",
        "duration": "0",
        "reset": "0",
    }
    if token:
        form["token"] = token
    response = await world.client.post(
        "/v1/hooks/nginx-rtmp/on_play", data=form, headers=world.auth(TRANSPORT, "gateway")
    )
    code = response.json()["code"] if response.content else "allowed"
    return response.status_code == 200, response.status_code, code


SERVERS: dict[str, Callable[[World, str, str | None, str], Awaitable[tuple[bool, int, str]]]] = {
    "mediamtx": ask_mediamtx,
    "zlmediakit": ask_zlmediakit,
    "nginx-rtmp": ask_nginx,
}


@pytest.mark.parametrize("server", list(SERVERS))
async def test_every_media_server_allows_only_a_valid_token_for_its_feed_action_and_live_grant(
    world: World, server: str
) -> None:
    ask = SERVERS[server]
    compact = server == "nginx-rtmp"  # RTMP URLs carry the compact token
    grant_id, token = await _granted_token(world, "unconditional", compact=compact)
    revoked_grant, revoked_token = await _granted_token(world, "conditional", compact=compact)
    path = gateway_path(world, "unconditional")
    expired = world.expired_token(
        grant_id, world.feed_id("unconditional"), path, URBAN, compact=compact
    )
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    revoke = await world.client.post(
        f"/v1/grants/{revoked_grant}/revoke",
        json={"reason": "test"},
        headers=world.auth(URBAN, "dept_admin"),
    )
    assert revoke.status_code == 200

    table: list[tuple[str, str, str | None, str, str]] = [
        ("valid", path, token, "live", "allowed"),
        ("no token", path, None, "live", "missing_token"),
        ("expired", path, expired, "live", "token_expired"),
        (
            "for another feed",
            gateway_path(world, "conditional"),
            token,
            "live",
            "token_for_another_feed",
        ),
        (
            "revoked grant",
            gateway_path(world, "conditional"),
            revoked_token,
            "live",
            "grant_revoked",
        ),
        ("tampered", path, tampered, "live", "token_bad_signature"),
        ("garbage", path, "not-a-token", "live", "token_malformed"),
    ]
    if server == "mediamtx":
        table.append(("action not granted", path, token, "playback", "action_not_granted"))
    for label, attempt_path, attempt_token, action, expected in table:
        allowed, status, code = await ask(world, attempt_path, attempt_token, action)
        assert allowed == (expected == "allowed"), (label, status, code)
        if server == "mediamtx" and expected == "missing_token":
            assert status == 401, label  # so RTSP clients retry with credentials
        else:
            assert code == expected, (label, code)
        if not allowed and server != "zlmediakit":
            assert status in (401, 403), label


async def test_mediamtx_hook_reads_the_token_from_password_or_query(world: World) -> None:
    _, token = await _granted_token(world, "unconditional")
    path = gateway_path(world, "unconditional")
    by_password = await world.hook(path, None, user="viewer", password=token)
    assert by_password.status_code == 200
    by_query = await world.hook(path, None, query=f"token={token}")
    assert by_query.status_code == 200
    publish = await world.hook(path, token, action="publish")
    assert publish.status_code == 403 and publish.json()["code"] == "action_not_granted"


async def test_hooks_need_a_gateway_identity(world: World) -> None:
    body = {"action": "read", "path": "live/x", "token": "t"}
    assert (
        await world.client.post("/v1/hooks/mediamtx/auth", json=body, headers={"Authorization": ""})
    ).status_code == 401
    as_requester = await world.client.post(
        "/v1/hooks/mediamtx/auth", json=body, headers=world.auth(URBAN, "requester")
    )
    assert as_requester.status_code == 403
    key = world.keys[(TRANSPORT, "gateway")]
    in_url = await world.client.post(
        f"/v1/hooks/mediamtx/auth?access_token={key}", json=body, headers={"Authorization": ""}
    )
    assert in_url.status_code == 403 and in_url.json()["code"] == "token_malformed"


async def test_session_end_reports_record_bytes_and_duration(world: World) -> None:
    grant_id, token = await _granted_token(world, "unconditional")
    path = gateway_path(world, "unconditional")
    app, stream = _split(path)
    report = {
        "totalBytes": 1_234_567,
        "duration": 42,
        "player": True,
        "ip": "127.0.0.1",
        "id": "149",
        "app": app,
        "stream": stream,
        "params": f"token={token}",
        "mediaServerId": "zlm-1",
    }
    answer = await world.client.post(
        "/v1/hooks/zlmediakit/on_flow_report", json=report, headers=world.auth(TRANSPORT, "gateway")
    )
    assert answer.json()["code"] == 0
    allowed, _, _ = await ask_nginx(world, path, token, "live")
    assert allowed
    form = {
        "call": "play_done",
        "addr": "127.0.0.1",
        "clientid": "7",
        "app": app,
        "name": stream,
        "token": token,
    }
    done = await world.client.post(
        "/v1/hooks/nginx-rtmp/on_play_done", data=form, headers=world.auth(TRANSPORT, "gateway")
    )
    assert done.status_code == 200

    await world.runtime.access.hook_events.flush()
    entries = (
        await world.client.get(f"/v1/audit?grant_id={grant_id}&event_type=feedgrid.retrieval.ended")
    ).json()["entries"]
    by_server = {entry["data"]["media_server"]: entry["data"] for entry in entries}
    assert by_server["zlm-1"]["bytes"] == 1_234_567 and by_server["zlm-1"]["duration_seconds"] == 42
    nginx = next(data for server, data in by_server.items() if server != "zlm-1")
    assert nginx["grant_id"] == grant_id and nginx["protocol"] == "rtmp"
    assert all(entry["owner_department"] == TRANSPORT for entry in entries)


async def test_hook_decisions_are_recorded_as_retrieval_events(world: World) -> None:
    grant_id, token = await _granted_token(world, "unconditional")
    path = gateway_path(world, "unconditional")
    assert (await world.hook(path, token)).status_code == 200
    assert (await world.hook(gateway_path(world, "conditional"), token)).status_code == 403
    assert (await world.hook(path, "garbage")).status_code == 403
    await world.runtime.access.hook_events.flush()
    entries = (await world.client.get("/v1/audit?event_type=feedgrid.retrieval.started")).json()[
        "entries"
    ]
    assert [(entry["grant_id"], entry["decision"]) for entry in entries] == [(grant_id, "allowed")]
    denied = (await world.client.get("/v1/audit?event_type=feedgrid.retrieval.denied")).json()[
        "entries"
    ]
    assert [(entry["feed_id"], entry["reason"]) for entry in denied] == [
        (world.feed_id("conditional"), "token_for_another_feed"),
        (world.feed_id("unconditional"), "token_malformed"),
    ]


async def test_revocation_reaches_another_replica_in_under_a_second(
    world: World, settings: Settings
) -> None:
    """Two API processes on one database: revoke on the first, the second refuses within 1 s."""
    grant_id, token = await _granted_token(world, "unconditional")
    path = gateway_path(world, "unconditional")
    replica = create_app(settings.model_copy(update={"relay_enabled": False}))
    async with replica.router.lifespan_context(replica):
        transport = httpx.ASGITransport(app=replica)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://replica", timeout=30
        ) as other:
            body: dict[str, Any] = {
                "action": "read",
                "path": path,
                "token": token,
                "protocol": "rtsp",
            }
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert (
                await other.post("/v1/hooks/mediamtx/auth", json=body, headers=headers)
            ).status_code == 200
            revoked = await world.client.post(
                f"/v1/grants/{grant_id}/revoke",
                json={"reason": "stop"},
                headers=world.auth(TRANSPORT, "dept_admin"),
            )
            assert revoked.status_code == 200
            started = time.monotonic()
            while True:
                answer = await other.post("/v1/hooks/mediamtx/auth", json=body, headers=headers)
                if answer.status_code == 403:
                    break
                assert time.monotonic() - started < 1.0, "revocation not seen within a second"
                await asyncio.sleep(0.02)
            assert answer.json()["code"] == "grant_revoked"
            # The replica that revoked refuses at once.
            assert (await world.hook(path, token)).json()["code"] == "grant_revoked"
