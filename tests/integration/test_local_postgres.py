"""The local PostgreSQL launcher against real clusters.

The shared cluster on 127.0.0.1:55432 is started when missing and never stopped here; stop and
restart run on a second cluster under tmp_path on a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from deploy.local_postgres import (
    DEFAULT_PORT,
    database_url,
    postgres_paths,
    postgres_running,
    postmaster_pid,
    start_postgres,
    stop_postgres,
)

pytestmark = pytest.mark.postgres


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.local_postgres", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def _free_port(start: int = 55500) -> int:
    for port in range(start, start + 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for the second cluster")


def test_start_is_idempotent() -> None:
    first = start_postgres(DEFAULT_PORT)
    pid = postmaster_pid()

    second = start_postgres(DEFAULT_PORT)
    cli = _cli("start", "--port", str(DEFAULT_PORT))
    status = _cli("status")

    assert first == second == database_url(DEFAULT_PORT)
    assert first == "postgresql+asyncpg://feedgrid:feedgrid@127.0.0.1:55432/feedgrid"
    assert pid is not None and postmaster_pid() == pid
    assert postgres_running()
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "already running" in cli.stdout
    assert status.returncode == 0 and f"pid {pid}" in status.stdout


async def test_asyncpg_connects_as_feedgrid() -> None:
    url = start_postgres(DEFAULT_PORT)

    connection = await asyncpg.connect(_dsn(url), timeout=10)
    try:
        assert await connection.fetchval("select 1") == 1
        assert await connection.fetchval("select current_user") == "feedgrid"
        assert await connection.fetchval("select current_database()") == "feedgrid"
        assert await connection.fetchval("show fsync") == "off"
        assert await connection.fetchval("show max_connections") == "200"
    finally:
        await connection.close()


async def test_second_cluster_stop_and_restart_keeps_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDGRID_VAR_DIR", str(tmp_path))
    env = dict(os.environ, FEEDGRID_VAR_DIR=str(tmp_path))
    port = _free_port()
    paths = postgres_paths()
    assert paths.root == tmp_path / "postgres"
    try:
        url = start_postgres(port)
        assert url == database_url(port)
        assert start_postgres(port) == url  # idempotent
        connection = await asyncpg.connect(_dsn(url), timeout=10)
        try:
            await connection.execute("create table kept (id int primary key)")
            await connection.execute("insert into kept values (42)")
        finally:
            await connection.close()

        assert stop_postgres() is True
        assert not postgres_running()
        status = _cli("status", env=env)
        assert status.returncode == 1 and "not running" in status.stdout
        assert _cli("stop", env=env).returncode == 0  # stopping a stopped cluster is fine

        restarted = _cli("start", "--port", str(port), env=env)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "Initialising" not in restarted.stdout  # initdb ran once only
        connection = await asyncpg.connect(_dsn(url), timeout=10)
        try:
            assert await connection.fetchval("select id from kept") == 42
        finally:
            await connection.close()
    finally:
        stop_postgres()
