"""Shared fixtures: real Kafka, real SQLite and PostgreSQL, an app per test.

The broker and the PostgreSQL cluster are started by ./deploy/test (or by these fixtures when
missing). Every test gets its own topic prefix and its own database, so tests never see each
other's events or rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from registry_api.app import create_app
from registry_api.db import create_engine
from registry_api.migrate import upgrade_registry
from schemas.settings import Settings
from tests import topic_prefixes

ADMIN_TOKEN = "test-admin-token-0123456789"

# Every log call of FeedGrid builds its record under test, as it does in `feedgrid up` (INFO)
# or with FEEDGRID_LOG_LEVEL=DEBUG: a record that cannot be built (an ``extra`` key the
# LogRecord owns, a format that does not match its arguments) fails a test, not a request.
logging.getLogger("feedgrid").setLevel(logging.DEBUG)
KAFKA_BOOTSTRAP = os.environ.get("FEEDGRID_TEST_KAFKA", "127.0.0.1:9092")
POSTGRES_ADMIN_URL = os.environ.get(
    "FEEDGRID_TEST_POSTGRES", "postgresql+asyncpg://feedgrid:feedgrid@127.0.0.1:55432/feedgrid"
)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("FEEDGRID_VAR_DIR", str(Path.cwd() / "var"))


_exit_status: list[int] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))
    _delete_test_topics()


def _delete_test_topics() -> None:
    """Deletes the topics the session's tests made (a few thousand partitions a full run),
    so the broker a developer keeps between runs (var/kafka) does not grow with every run."""
    if not topic_prefixes.HANDED_OUT:
        return
    from deploy.local_kafka import broker_answers
    from infra.kafka_admin import delete_topics_under

    if not broker_answers(KAFKA_BOOTSTRAP, 3.0):
        return
    try:
        deleted = asyncio.run(delete_topics_under(KAFKA_BOOTSTRAP, topic_prefixes.HANDED_OUT))
    except Exception as error:  # cleanup only: the run's result stands
        print(f"\nthe tests' topics were not deleted: {error!r}", flush=True)
        return
    topic_prefixes.HANDED_OUT.clear()
    print(f"\ndeleted the {deleted} topics the tests made", flush=True)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A Faust worker that failed to stop leaves its consumer thread running, and a live
    non-daemon thread would keep the interpreter from exiting: the run would hang after its
    report. Exit with pytest's status instead (the report is out by now)."""
    stuck = [
        thread
        for thread in threading.enumerate()
        if thread.is_alive() and not thread.daemon and thread is not threading.main_thread()
    ]
    if stuck and _exit_status:
        print(f"\nexiting past {len(stuck)} thread(s) still running: {stuck}", flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The tests' broker. One already answering (``./deploy/test`` starts one) is used as it
    is; one this session had to start (pytest run directly) is stopped when the session
    ends, after the session's topics are deleted."""
    from deploy.local_kafka import broker_answers, start_kafka, stop_kafka

    started = not broker_answers(KAFKA_BOOTSTRAP, 3.0)
    if started:
        start_kafka(port=int(KAFKA_BOOTSTRAP.rsplit(":", 1)[1]))
    try:
        yield KAFKA_BOOTSTRAP
    finally:
        if started:
            _delete_test_topics()
            stop_kafka()


@pytest.fixture
def topic_prefix() -> str:
    return topic_prefixes.new_topic_prefix()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "registry.db"
    upgrade_registry(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """The migrated template every PostgreSQL test database is copied from. A server already
    answering (``./deploy/test`` starts one) is used as it is; one this session had to start
    (pytest run directly) is stopped when the session ends."""
    from deploy.local_postgres import start_postgres, stop_postgres

    started = not _postgres_answers()
    if started:
        start_postgres()
    try:
        name = f"feedgrid_template_{uuid.uuid4().hex[:8]}"
        asyncio.run(_postgres_command(f'CREATE DATABASE "{name}"'))
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        upgrade_registry(url)
        yield name
    finally:
        if started:
            stop_postgres()


def _postgres_answers() -> bool:
    """True when a server already accepts connections on the test port (reused as it is)."""
    try:
        asyncio.run(_postgres_command("SELECT 1"))
        return True
    except Exception:
        return False


async def _postgres_command(statement: str) -> None:
    engine = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated registry database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "registry.db"
        shutil.copy(template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"feedgrid_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_postgres_command(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_postgres_command(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The registry's engine on ``database_url``, disposed after the test."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def settings(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> Settings:
    return Settings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=f"chdb://{tmp_path / 'analytics'}",
        admin_token=ADMIN_TOKEN,
        topic_prefix=topic_prefix,
        topic_partitions=3,
        signing_key_dir=tmp_path / "keys",
        var_dir=tmp_path / "var",
        embedded_worker=False,
        relay_idle_seconds=0.05,
        index_follow=False,  # one replica per test; tests/integration/test_feeds_replicas.py
    )


@contextlib.asynccontextmanager
async def running_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on a running app (lifespan started: relay, topics, components), as the
    city admin. Tests that need several apps at once (replicas) open one each."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://feedgrid.test", timeout=60
        ) as http:
            http.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            http.app = application  # type: ignore[attr-defined]
            yield http


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(settings) as http:
        yield http


@pytest.fixture
def stream_settings(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, sqlite_template: Path
) -> Iterator[Settings]:
    """Settings of a stream worker: the shared broker, SQLite registry, chdb in tmp_path."""
    from tests.integration.streams_support import close_analytics, make_settings

    settings = make_settings(tmp_path, kafka_bootstrap, topic_prefix, sqlite_template)
    yield settings
    close_analytics(settings)
