"""Sessions of a revoked grant are kicked through ZLMediaKit's and MediaMTX's control APIs
(small real HTTP servers speaking their documented API, tests/integration/control_servers.py),
failures are retried with backoff and bounded, and a cut owed when the API stops is made once
it is back. The nginx-rtmp end of the same machinery runs against the real nginx in
tests/e2e/test_session_cut.py."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from schemas.settings import MediaServerControl, Settings
from tests.conftest import running_client
from tests.integration.access_world import TRANSPORT, URBAN, World, build_world, gateway_path
from tests.integration.control_servers import ControlServer, control_server

pytestmark = pytest.mark.kafka

ZLM_SECRET = "zlm-api-secret-0123"
MTX_CREDENTIALS = "feedgrid:mediamtx-api-pass"
CUT_WITHIN = 2.0


def _with_servers(settings: Settings, *servers: MediaServerControl) -> Settings:
    return settings.model_copy(
        update={
            "media_servers": list(servers),
            "enforcement_poll_seconds": 0.1,
            "enforcement_retry_initial_seconds": 0.2,
            "enforcement_attempts": 4,
        }
    )


def _zlm(url: str, secret: str = ZLM_SECRET) -> MediaServerControl:
    return MediaServerControl.model_validate(
        {"name": "zlm-1", "kind": "zlmediakit", "control_url": url, "secret": secret}
    )


def _mediamtx(url: str) -> MediaServerControl:
    return MediaServerControl.model_validate(
        {"name": "mtx-1", "kind": "mediamtx", "control_url": url, "secret": MTX_CREDENTIALS}
    )


async def _granted(world: World) -> tuple[str, str]:
    answer = await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
    grant_id = answer["feeds"][0]["grant_id"]
    retrieval = await world.retrieval(URBAN, grant_id)
    return grant_id, retrieval.json()["feeds"][0]["token"]


async def _zlm_play(world: World, token: str, session_id: str) -> None:
    app, stream = gateway_path(world, "unconditional").split("/", 1)
    body = {"schema": "rtsp", "app": app, "stream": stream, "params": f"token={token}"}
    response = await world.client.post(
        "/v1/hooks/zlmediakit/on_play",
        json={**body, "id": session_id, "ip": "10.1.1.1", "mediaServerId": "zlm-1"},
        headers=world.auth(TRANSPORT, "gateway"),
    )
    assert response.json()["code"] == 0, response.text


async def _mediamtx_read(world: World, token: str, session_id: str | None, protocol: str) -> None:
    response = await world.client.post(
        "/v1/hooks/mediamtx/auth?server=mtx-1",
        json={
            "token": token,
            "ip": "10.1.1.2",
            "action": "read",
            "path": gateway_path(world, "unconditional"),
            "protocol": protocol,
            "id": session_id,
        },
        headers=world.auth(TRANSPORT, "gateway"),
    )
    assert response.status_code == 200, response.text


async def _sessions(world: World, grant_id: str, role: str = "requester") -> list[dict[str, Any]]:
    response = await world.client.get(
        f"/v1/grants/{grant_id}/sessions", headers=world.auth(URBAN, role)
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def _until(check: Any, seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds}s")


def _cuts(metrics: str, kind: str, outcome: str) -> float:
    """The count of one outcome of revoked grants' cuts (counters live for the process)."""
    sample = (
        f'feedgrid_enforcement_cuts_total{{kind="{kind}",outcome="{outcome}",reason="revoked"}}'
    )
    for line in metrics.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _metrics(world: World) -> str:
    return (await world.client.get("/metrics")).text


async def _revoke(world: World, grant_id: str) -> float:
    response = await world.client.post(
        f"/v1/grants/{grant_id}/revoke",
        json={"reason": "no longer needed"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert response.status_code == 200, response.text
    return time.monotonic()


async def _cut_after(server: ControlServer, session_id: str, since: float) -> float:
    async def kicked() -> float | None:
        at = server.kicked.get(session_id)
        return None if at is None else at - since

    return float(await _until(kicked))


async def test_revocation_kicks_zlmediakit_and_mediamtx_sessions(settings: Settings) -> None:
    with (
        control_server("zlmediakit", ZLM_SECRET) as zlm,
        control_server("mediamtx", MTX_CREDENTIALS) as mtx,
    ):
        zlm.sessions |= {"zs-1", "zs-2"}
        mtx.sessions |= {"7c1f0a52-rtsp"}
        async with running_client(_with_servers(settings, _zlm(zlm.url), _mediamtx(mtx.url))) as (
            client
        ):
            world = await build_world(client)
            grant_id, token = await _granted(world)
            await _zlm_play(world, token, "zs-1")
            await _zlm_play(world, token, "zs-2")
            await _mediamtx_read(world, token, "7c1f0a52-rtsp", "rtsp")
            await _mediamtx_read(world, token, None, "hls")  # HLS holds no session to cut
            # zs-2 ends by itself: its end is reported and it is forgotten.
            app, stream = gateway_path(world, "unconditional").split("/", 1)
            ended = await client.post(
                "/v1/hooks/zlmediakit/on_flow_report",
                json={
                    "app": app,
                    "stream": stream,
                    "id": "zs-2",
                    "mediaServerId": "zlm-1",
                    "params": f"token={token}",
                    "totalBytes": 1000,
                    "duration": 2,
                    "player": True,
                },
                headers=world.auth(TRANSPORT, "gateway"),
            )
            assert ended.json()["code"] == 0

            async def two_open() -> list[dict[str, Any]] | None:
                found = await _sessions(world, grant_id)
                return found if len(found) == 2 else None

            opened = await _until(two_open)
            assert {(item["kind"], item["server"], item["session_id"]) for item in opened} == {
                ("zlmediakit", "zlm-1", "zs-1"),
                ("mediamtx", "mtx-1", "7c1f0a52-rtsp"),
            }
            assert {item["state"] for item in opened} == {"open"}
            # The owner's admin sees them too; the secrets of the control APIs appear nowhere.
            as_owner = await client.get(
                f"/v1/grants/{grant_id}/sessions", headers=world.auth(TRANSPORT, "dept_admin")
            )
            assert len(as_owner.json()) == 2
            assert ZLM_SECRET not in as_owner.text and "mediamtx-api-pass" not in as_owner.text

            before = await _metrics(world)
            revoked_at = await _revoke(world, grant_id)
            assert await _cut_after(zlm, "zs-1", revoked_at) <= CUT_WITHIN
            assert await _cut_after(mtx, "7c1f0a52-rtsp", revoked_at) <= CUT_WITHIN
            assert "zs-2" not in zlm.kicked  # it had ended: nothing to cut
            assert [call for call in mtx.calls if "/v3/rtspsessions/kick/" in call]
            await _until(lambda: _none_left(world, grant_id))
            after = await _metrics(world)
            for kind in ("zlmediakit", "mediamtx"):
                assert _cuts(after, kind, "cut") - _cuts(before, kind, "cut") == 1, kind


async def _none_left(world: World, grant_id: str) -> bool:
    return await _sessions(world, grant_id) == []


async def test_failing_control_apis_are_retried_with_backoff_then_set_aside(
    settings: Settings,
) -> None:
    with (
        control_server("zlmediakit", ZLM_SECRET) as zlm,
        control_server("mediamtx", MTX_CREDENTIALS) as mtx,
    ):
        mtx.sessions.add("m-1")
        mtx.failures_left = 2  # busy twice, then it kicks
        zlm.sessions.add("z-1")
        wrong_secret = _zlm(zlm.url, secret="not-the-secret")
        async with running_client(_with_servers(settings, wrong_secret, _mediamtx(mtx.url))) as (
            client
        ):
            world = await build_world(client)
            grant_id, token = await _granted(world)
            await _mediamtx_read(world, token, "m-1", "rtsp")
            await _zlm_play(world, token, "z-1")
            await _until(lambda: _count(world, grant_id, 2))
            before = await _metrics(world)
            await _revoke(world, grant_id)

            async def settled() -> list[dict[str, Any]] | None:
                found = await _sessions(world, grant_id)
                return found if [item["state"] for item in found] == ["set_aside"] else None

            (set_aside,) = await _until(settled)
            assert "m-1" in mtx.kicked and len(mtx.calls) == 3  # two failures, one kick
            # A refused secret is not retried: no waiting cures it. The reason is kept.
            assert (set_aside["kind"], set_aside["attempts"]) == ("zlmediakit", 1)
            assert "-100" in set_aside["last_error"] and set_aside["cut_reason"] == "revoked"
            assert "z-1" in zlm.sessions and "not-the-secret" not in set_aside["last_error"]
            after = await _metrics(world)
            assert _cuts(after, "mediamtx", "retry") - _cuts(before, "mediamtx", "retry") == 2
            aside = _cuts(after, "zlmediakit", "set_aside")
            assert aside - _cuts(before, "zlmediakit", "set_aside") == 1


async def _count(world: World, grant_id: str, count: int) -> bool:
    return len(await _sessions(world, grant_id)) == count


def _reserved_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_cut_owed_when_the_api_stops_is_made_after_it_restarts(
    settings: Settings,
) -> None:
    port = _reserved_port()  # nothing listens there yet: the media server is down
    server = _mediamtx(f"http://127.0.0.1:{port}")
    configured = _with_servers(settings, server).model_copy(
        update={"enforcement_retry_initial_seconds": 1.0, "enforcement_attempts": 8}
    )
    async with running_client(configured) as client:
        world = await build_world(client)
        grant_id, token = await _granted(world)
        await _mediamtx_read(world, token, "m-9", "rtsp")
        await _until(lambda: _count(world, grant_id, 1))
        await _revoke(world, grant_id)

        async def failed_once() -> bool:
            (item,) = await _sessions(world, grant_id)
            return bool(item["attempts"] >= 1 and item["state"] == "cutting")

        await _until(failed_once)
    # The API is down; the media server comes up; the API starts again and owes the cut.
    with control_server("mediamtx", MTX_CREDENTIALS, port=port) as mtx:
        mtx.sessions.add("m-9")
        started = time.monotonic()
        async with running_client(configured) as client:
            assert await _cut_after(mtx, "m-9", started) <= 10.0

            # The kick reached the server; the row goes once its answer is read back.
            async def none_left() -> bool:
                listed = await client.get(f"/v1/grants/{grant_id}/sessions")
                assert listed.status_code == 200, listed.text
                return listed.json() == []

            await _until(none_left)


# One database is enough here: what differs between dialects is proven by the tests above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_session_id_a_restarted_server_reuses_belongs_to_the_newest_play(
    settings: Settings,
) -> None:
    """nginx-rtmp counts clientids from 1 again after a restart; a session whose end was never
    reported must not hide the new session with its id, nor get the new grant cut."""
    with control_server("zlmediakit", ZLM_SECRET) as zlm:
        async with running_client(_with_servers(settings, _zlm(zlm.url))) as client:
            world = await build_world(client)
            first_grant, first_token = await _granted(world)
            await _zlm_play(world, first_token, "s-1")
            await _until(lambda: _count(world, first_grant, 1))
            second_grant, second_token = await _granted(world)
            await _zlm_play(world, second_token, "s-1")  # the server restarted meanwhile
            await _until(lambda: _count(world, second_grant, 1))
            assert await _sessions(world, first_grant) == []
            zlm.sessions.add("s-1")
            revoked_at = await _revoke(world, first_grant)
            await asyncio.sleep(CUT_WITHIN)
            assert "s-1" not in zlm.kicked, "the first grant's revocation cut the second's play"
            revoked_at = await _revoke(world, second_grant)
            assert await _cut_after(zlm, "s-1", revoked_at) <= CUT_WITHIN
