"""A revocation, and a grant's end, cut a viewer who is playing: real nginx-rtmp, real FFmpeg.

nginx has the RTMP module's control API (``rtmp_control all;`` in an http location), and is
named to FeedGrid in ``FEEDGRID_MEDIA_SERVERS``; its hooks carry ``?server=edge-1``. Two
viewers play through nginx under two grants: one grant is revoked, the other ends a few
seconds into the test. Each viewer must be disconnected within 2 s (of the revocation, of the
grant's end), and must not get back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.test_nginx_rtmp import (
    APP,
    RTMP_MODULE,
    Stack,
    _free_port,
    _media_path,
    _play,
    _publish,
    _stop,
    _wait_until_playable,
    running_api,
    running_nginx,
)
from tests.integration.access_world import TRANSPORT, URBAN, World, build_world

pytestmark = pytest.mark.kafka

CUT_WITHIN = 2.0
SERVER = "edge-1"

NGINX_CONF = """
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{control_port};
        location /control {{ rtmp_control all; }}
    }}
}}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        application {app} {{
            live on;
            on_play {api}/v1/hooks/nginx-rtmp/on_play?server={server}&access_token={key};
            on_play_done {api}/v1/hooks/nginx-rtmp/on_play_done?server={server}&access_token={key};
        }}
    }}
}}
"""


@pytest.fixture
def control_port() -> int:
    return _free_port()


@pytest.fixture
def enforcing_api(
    kafka_bootstrap: str, tmp_path: Path, control_port: int
) -> Iterator[tuple[str, Path]]:
    servers = [
        {
            "name": SERVER,
            "kind": "nginx-rtmp",
            "control_url": f"http://127.0.0.1:{control_port}/control",
        }
    ]
    extra = {
        "FEEDGRID_MEDIA_SERVERS": orjson.dumps(servers).decode(),
        "FEEDGRID_ENFORCEMENT_POLL_SECONDS": "0.25",
    }
    with running_api(kafka_bootstrap, tmp_path, extra) as api:
        yield api


@pytest.fixture
async def world(enforcing_api: tuple[str, Path]) -> AsyncIterator[World]:
    api, _ = enforcing_api
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield await build_world(client)


@pytest.fixture
def stack(
    world: World, enforcing_api: tuple[str, Path], tmp_path: Path, control_port: int
) -> Iterator[Stack]:
    api, key_dir = enforcing_api
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    rtmp_port = _free_port()
    (prefix / "nginx.conf").write_text(
        NGINX_CONF.format(
            module=RTMP_MODULE,
            prefix=prefix,
            port=rtmp_port,
            control_port=control_port,
            app=APP,
            api=api,
            server=SERVER,
            key=world.keys[(TRANSPORT, "gateway")],
        )
    )
    with running_nginx(prefix, rtmp_port, control_port):
        yield Stack(api, rtmp_port, key_dir)


async def _grant(world: World, feed: str, **window: Any) -> tuple[str, str]:
    """A grant to URBAN on the feed, and the compact token of its RTMP URL."""
    answer = await world.request(URBAN, feed_ids=[world.feed_id(feed)], **window)
    grant_id = answer["feeds"][0]["grant_id"]
    assert grant_id, answer
    retrieval = await world.retrieval(URBAN, grant_id)
    assert retrieval.status_code == 200, retrieval.text
    (rtmp,) = [url for url in retrieval.json()["feeds"][0]["urls"] if url["protocol"] == "rtmp"]
    return grant_id, parse_qs(urlsplit(rtmp["url"]).query)["token"][0]


async def _viewer(stack: Stack, media_path: str, token: str) -> asyncio.subprocess.Process:
    """A player that keeps playing until the server lets it go."""
    return await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-rw_timeout",
        "20000000",
        "-rtmp_app",
        APP,
        "-rtmp_playpath",
        f"{media_path}?token={token}",
        "-i",
        f"rtmp://127.0.0.1:{stack.rtmp_port}/{APP}",
        "-f",
        "null",
        "-",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _open_sessions(world: World, grant_id: str) -> list[dict[str, object]]:
    response = await world.client.get(
        f"/v1/grants/{grant_id}/sessions", headers=world.auth(URBAN, "requester")
    )
    assert response.status_code == 200, response.text
    return [item for item in response.json() if item["state"] == "open"]


async def _wait_for_sessions(world: World, grant_id: str, count: int) -> list[dict[str, object]]:
    """The grant's open sessions once there are ``count`` of them (0: the probes' ended)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sessions = await _open_sessions(world, grant_id)
        if len(sessions) == count:
            return sessions
        await asyncio.sleep(0.1)
    raise AssertionError(f"grant {grant_id} never had {count} open session(s)")


async def _start_viewer(
    world: World, stack: Stack, grant_id: str, media_path: str, token: str
) -> asyncio.subprocess.Process:
    """A viewer playing under the grant, once the grant's sessions show it (and only it)."""
    assert await _wait_until_playable(stack, media_path, token)
    await _wait_for_sessions(world, grant_id, 0)  # the probe above has ended
    viewer = await _viewer(stack, media_path, token)
    (session,) = await _wait_for_sessions(world, grant_id, 1)
    assert (session["kind"], session["server"]) == ("nginx-rtmp", SERVER)
    assert viewer.returncode is None, "the viewer stopped before its grant ended"
    return viewer


async def _seconds_until_exit(viewer: asyncio.subprocess.Process, limit: float) -> float:
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(viewer.wait(), limit)
    return time.monotonic() - started


async def test_a_revocation_and_a_grant_s_end_cut_the_viewers_who_are_playing(
    world: World, stack: Stack
) -> None:
    revoked_camera = _media_path(world, "unconditional")
    ending_camera = _media_path(world, "police_camera")
    revoked_grant, revoked_token = await _grant(world, "unconditional")
    publishers = [_publish(stack, path, 90) for path in (revoked_camera, ending_camera)]
    viewers: list[asyncio.subprocess.Process] = []
    try:
        viewers.append(
            await _start_viewer(world, stack, revoked_grant, revoked_camera, revoked_token)
        )

        # The owner's admin revokes while the viewer plays: cut within 2 s, no way back in.
        revoke = await world.client.post(
            f"/v1/grants/{revoked_grant}/revoke",
            json={"reason": "incident closed"},
            headers=world.auth(TRANSPORT, "dept_admin"),
        )
        assert revoke.status_code == 200, revoke.text
        took = await _seconds_until_exit(viewers[0], 10)
        assert took <= CUT_WITHIN, f"the revoked viewer was cut after {took:.2f}s"
        print(
            orjson.dumps({"name": "revoked_viewer_cut_seconds", "value": round(took, 3)}).decode()
        )
        assert await _play(stack, revoked_camera, revoked_token, frames=1) == 0

        # A grant that ends while its viewer plays: cut at the end, not at the next check.
        ends_at = datetime.now(UTC) + timedelta(seconds=12)
        ending_grant, ending_token = await _grant(
            world,
            "police_camera",
            valid_from=(ends_at - timedelta(minutes=60)).isoformat(),
            duration_minutes=60,
        )
        viewers.append(await _start_viewer(world, stack, ending_grant, ending_camera, ending_token))
        remaining = (ends_at - datetime.now(UTC)).total_seconds()
        assert remaining > 0.5, "the grant ended before its viewer was seen playing"
        took = await _seconds_until_exit(viewers[1], remaining + 10)
        late = took - remaining
        assert -0.5 <= late <= CUT_WITHIN, f"the ended grant's viewer was cut {late:.2f}s late"
        print(orjson.dumps({"name": "ended_viewer_cut_seconds", "value": round(late, 3)}).decode())
        assert await _play(stack, ending_camera, ending_token, frames=1) == 0

        # Nothing is left to cut, and the cuts are counted.
        for grant_id in (revoked_grant, ending_grant):
            assert await _open_sessions(world, grant_id) == []
        metrics = (await world.client.get("/metrics")).text
        assert (
            'feedgrid_enforcement_cuts_total{kind="nginx-rtmp",outcome="cut",reason="revoked"}'
            in metrics
        )
        assert (
            'feedgrid_enforcement_cuts_total{kind="nginx-rtmp",outcome="cut",reason="expired"}'
            in metrics
        )
    finally:
        for viewer in viewers:
            if viewer.returncode is None:
                viewer.kill()
                await viewer.wait()
        for publisher in publishers:
            _stop(publisher)
