"""The local PostgreSQL launcher against real clusters.

Every test runs a cluster of its own under tmp_path on a free port: the shared one on
127.0.0.1:55432 (the test databases) may belong to another checkout and is never touched here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from deploy.local_postgres import (
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


@pytest.fixture
def private_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, int, dict[str, str]]]:
    """A cluster of this test's own (var dir under tmp_path, a free port): the shared one on
    55432 may belong to another checkout, so these tests never rely on it."""
    monkeypatch.setenv("FEEDGRID_VAR_DIR", str(tmp_path))
    env = dict(os.environ, FEEDGRID_VAR_DIR=str(tmp_path))
    port = _free_port()
    try:
        yield start_postgres(port), port, env
    finally:
        stop_postgres()


def test_start_is_idempotent(private_cluster: tuple[str, int, dict[str, str]]) -> None:
    first, port, env = private_cluster
    pid = postmaster_pid()

    second = start_postgres(port)
    cli = _cli("start", "--port", str(port), env=env)
    status = _cli("status", env=env)

    assert first == second == database_url(port)
    assert first == f"postgresql+asyncpg://feedgrid:feedgrid@127.0.0.1:{port}/feedgrid"
    assert pid is not None and postmaster_pid() == pid
    assert postgres_running()
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "already running" in cli.stdout
    assert status.returncode == 0 and f"pid {pid}" in status.stdout


async def test_asyncpg_connects_as_feedgrid(
    private_cluster: tuple[str, int, dict[str, str]],
) -> None:
    url, _port, _env = private_cluster

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
