"""End to end with a real media server: nginx with the RTMP module asks our on_play hook.

The API runs as a real uvicorn process; nginx (loopback ports, its own prefix) points on_play
and on_play_done at it; FFmpeg publishes a test pattern; FFmpeg players then prove that a valid
token plays, and that no token, a token for another feed, an expired token and a revoked grant
are all refused by nginx itself.

Needs the Debian packages nginx, libnginx-mod-rtmp and ffmpeg; skipped (with the reason) when
they are absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from registry_api.migrate import upgrade_registry
from registry_api.tokens.keyring import KeyRing
from registry_api.tokens.service import RetrievalTokens
from tests.conftest import ADMIN_TOKEN
from tests.integration.access_world import TRANSPORT, URBAN, World, build_world

pytestmark = pytest.mark.kafka

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
APP = "live"


def _missing_tools() -> str | None:
    missing = [tool for tool in ("nginx", "ffmpeg") if shutil.which(tool) is None]
    if not RTMP_MODULE.exists():
        missing.append(f"libnginx-mod-rtmp ({RTMP_MODULE})")
    return ", ".join(missing) or None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before listening on {port}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class Stack:
    api: str
    rtmp_port: int
    key_dir: Path


@contextlib.contextmanager
def running_api(
    kafka_bootstrap: str, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, Path]]:
    """FeedGrid's API as a uvicorn process on a free port: its URL and its signing-key dir."""
    reason = _missing_tools()
    if reason:
        pytest.skip(
            f"the nginx RTMP end-to-end test needs: {reason} "
            "(apt-get install nginx libnginx-mod-rtmp ffmpeg)"
        )
    database = f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    upgrade_registry(database)
    port = _free_port()
    key_dir = tmp_path / "keys"
    env = os.environ | {
        "FEEDGRID_DATABASE_URL": database,
        "FEEDGRID_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FEEDGRID_CLICKHOUSE_URL": f"chdb://{tmp_path}/analytics",
        "FEEDGRID_ADMIN_TOKEN": ADMIN_TOKEN,
        "FEEDGRID_TOPIC_PREFIX": f"rtmp{uuid.uuid4().hex[:8]}.",
        "FEEDGRID_SIGNING_KEY_DIR": str(key_dir),
        "FEEDGRID_VAR_DIR": str(tmp_path / "var"),
        "FEEDGRID_EMBEDDED_WORKER": "false",
        "FEEDGRID_MEDIA_GATEWAY_APP": APP,
        "FEEDGRID_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "registry_api.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "api.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    try:
        _wait_for_port(port, process, 60)
        yield f"http://127.0.0.1:{port}", key_dir
    finally:
        _stop(process)


@pytest.fixture
def api_process(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with running_api(kafka_bootstrap, tmp_path) as api:
        yield api


NGINX_CONF = """
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 128; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        application {app} {{
            live on;
            on_play {api}/v1/hooks/nginx-rtmp/on_play?access_token={key};
            on_play_done {api}/v1/hooks/nginx-rtmp/on_play_done?access_token={key};
        }}
    }}
}}
"""


@pytest.fixture
async def world(api_process: tuple[str, Path]) -> AsyncIterator[World]:
    api, _ = api_process
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield await build_world(client)


@pytest.fixture
def stack(world: World, api_process: tuple[str, Path], tmp_path: Path) -> Iterator[Stack]:
    api, key_dir = api_process
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    rtmp_port = _free_port()
    (prefix / "nginx.conf").write_text(
        NGINX_CONF.format(
            module=RTMP_MODULE,
            prefix=prefix,
            port=rtmp_port,
            app=APP,
            api=api,
            key=world.keys[(TRANSPORT, "gateway")],
        )
    )
    with running_nginx(prefix, rtmp_port):
        yield Stack(api, rtmp_port, key_dir)


@contextlib.contextmanager
def running_nginx(prefix: Path, *ports: int) -> Iterator[None]:
    """nginx from `prefix/nginx.conf`, until every port answers; stopped at the end."""
    nginx = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for port in ports:
            _wait_for_port(port, nginx)
        yield
    finally:
        _stop(nginx)


def _media_path(world: World, name: str) -> str:
    return str(world.feeds[name]["stream"]["media_path"])


def _publish(stack: Stack, media_path: str, seconds: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            str(seconds),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-f",
            "flv",
            "-rtmp_app",
            APP,
            "-rtmp_playpath",
            media_path,
            f"rtmp://127.0.0.1:{stack.rtmp_port}/{APP}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _play(stack: Stack, media_path: str, token: str | None, frames: int = 5) -> int:
    """Plays the feed through nginx; returns how many video frames FFmpeg decoded."""
    playpath = f"{media_path}?token={token}" if token else media_path
    process = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-rw_timeout",
        "8000000",
        "-rtmp_app",
        APP,
        "-rtmp_playpath",
        playpath,
        "-i",
        f"rtmp://127.0.0.1:{stack.rtmp_port}/{APP}",
        "-frames:v",
        str(frames),
        "-f",
        "framemd5",
        "-",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        return 0
    if process.returncode != 0:
        return 0
    return sum(1 for line in output.decode().splitlines() if line and not line.startswith("#"))


def _expired_token(key_dir: Path, grant_id: str, feed_id: str, media_path: str) -> str:
    ring = KeyRing(key_dir, rotation_period=timedelta(days=30), longest_token=timedelta(minutes=15))
    ring.load()
    past = datetime.now(UTC) - timedelta(hours=1)
    token = (
        RetrievalTokens(ring, issuer="feedgrid", ttl=timedelta(minutes=15))
        .mint(
            subject="key:e2e:expired",
            department=URBAN,
            grant_id=grant_id,
            feed_id=feed_id,
            actions=["live"],
            media_path=f"{APP}/{media_path}",
            grant_valid_from=past,
            grant_valid_until=past + timedelta(days=1),
            now=past,
        )
        .compact
    )
    assert token is not None
    return token


async def _token_for(world: World, feed: str) -> tuple[str, str]:
    answer = await world.request(URBAN, feed_ids=[world.feed_id(feed)])
    grant_id = answer["feeds"][0]["grant_id"]
    retrieval = await world.retrieval(URBAN, grant_id)
    assert retrieval.status_code == 200, retrieval.text
    (rtmp,) = [url for url in retrieval.json()["feeds"][0]["urls"] if url["protocol"] == "rtmp"]
    # The token as a player takes it from the RTMP URL the grant yields.
    token = parse_qs(urlsplit(rtmp["url"]).query)["token"][0]
    assert len(f"token={token}") <= 256  # nginx-rtmp cuts play arguments there
    return grant_id, token


async def _wait_until_playable(stack: Stack, media_path: str, token: str) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        frames = await _play(stack, media_path, token, frames=1)
        if frames:
            return frames
        await asyncio.sleep(0.5)
    return 0


async def test_nginx_rtmp_plays_only_with_a_valid_token_for_a_live_grant(
    world: World, stack: Stack
) -> None:
    camera = _media_path(world, "unconditional")
    grant_id, token = await _token_for(world, "unconditional")
    revoked_grant, revoked_token = await _token_for(world, "conditional")
    _, other_feed_token = await _token_for(world, "police_camera")
    publisher = _publish(stack, camera, seconds=60)
    conditional_publisher = _publish(stack, _media_path(world, "conditional"), seconds=60)
    try:
        assert await _wait_until_playable(stack, camera, token), "the valid token never played"
        assert await _play(stack, camera, token) == 5

        assert await _play(stack, camera, None) == 0, "played without a token"
        assert await _play(stack, camera, other_feed_token) == 0, "played with another feed's token"
        expired = _expired_token(stack.key_dir, grant_id, world.feed_id("unconditional"), camera)
        assert await _play(stack, camera, expired) == 0, "played with an expired token"

        conditional = _media_path(world, "conditional")
        assert await _wait_until_playable(stack, conditional, revoked_token), (
            "the second feed never played"
        )
        revoke = await world.client.post(
            f"/v1/grants/{revoked_grant}/revoke",
            json={"reason": "e2e"},
            headers=world.auth(TRANSPORT, "dept_admin"),
        )
        assert revoke.status_code == 200
        assert await _play(stack, conditional, revoked_token) == 0, "played on a revoked grant"
    finally:
        _stop(publisher)
        _stop(conditional_publisher)

    # nginx's calls are in the audit log, with the reason of each refusal.
    deadline = time.monotonic() + 10
    reasons: set[str] = set()
    while time.monotonic() < deadline:
        denied = (
            await world.client.get("/v1/audit", params={"event_type": "feedgrid.retrieval.denied"})
        ).json()
        reasons = {entry["reason"] for entry in denied["entries"]}
        if {"missing_token", "token_for_another_feed", "token_expired", "grant_revoked"} <= reasons:
            break
        await asyncio.sleep(0.2)
    assert {"missing_token", "token_for_another_feed", "token_expired", "grant_revoked"} <= reasons
    started = (
        await world.client.get("/v1/audit", params={"event_type": "feedgrid.retrieval.started"})
    ).json()
    assert {entry["data"]["protocol"] for entry in started["entries"]} == {"rtmp"}
    assert grant_id in {entry["grant_id"] for entry in started["entries"]}
