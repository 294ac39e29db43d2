"""The registry database: one async engine per process, sessions per request."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from prometheus_client import Histogram
from sqlalchemy import CursorResult, DateTime, Engine, MetaData, Result, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are stored and returned in UTC, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


SQLITE_WAIT_SECONDS = 300.0
# Where a commit checkpoints the write-ahead log itself: far above what the API's background
# checkpointer (registry_api.wal_checkpoints) lets the log grow to; a safety net for processes
# that run none (migrations, tools).
SQLITE_AUTOCHECKPOINT_PAGES = 20_000


def create_engine(database_url: str) -> AsyncEngine:
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One writer at a time: under overload a writer may queue behind others for a long
        # while. It waits (in the driver's thread, not on the event loop) instead of failing
        # with "database is locked" after SQLite's usual few seconds.
        engine = create_async_engine(
            database_url,
            connect_args={"timeout": SQLITE_WAIT_SECONDS},
            pool_timeout=SQLITE_WAIT_SECONDS,
            # The connection returned last is handed out next. Each pooled connection has its
            # own page cache, and SQLite empties it whenever another connection has written
            # since its last transaction: handed out in turn (the pool's default), every
            # request met a cold cache and read its pages again (an access request for 100
            # feeds: 62 -> 27 ms p50, 68 -> 31 ms of CPU, measured on the demo city).
            pool_use_lifo=True,
        )
        _tune_sqlite(engine)
        return engine
    return create_async_engine(database_url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_WAIT_SECONDS * 1000)}")
        # 16 MiB of page cache per connection: now that the pool hands out the connection
        # returned last, caches stay warm and fill; at 64 MiB the pool's 15 connections took
        # the all-in-one from 1.2 to 2.0 GiB under the load benchmark. Access requests were as
        # fast with 4, 16 or 64 MiB (demo city, sequential, within the machine's noise).
        cursor.execute("PRAGMA cache_size=-16384")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
        cursor.close()


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()
_TURN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TURN_WAITED = Histogram(
    "feedgrid_sqlite_write_turn_wait_seconds",
    "Time a SQLite registry writer waited for its turn to write",
    ["writer"],
    buckets=_TURN_BUCKETS,
)
TURN_HELD = Histogram(
    "feedgrid_sqlite_write_turn_held_seconds",
    "Time a SQLite registry writer held its turn (its writes and commit)",
    ["writer"],
    buckets=_TURN_BUCKETS,
)


@contextlib.asynccontextmanager
async def writes_in_turn(session: AsyncSession, writer: str) -> AsyncIterator[None]:
    """Around a transaction's writes and its commit: on SQLite, the writers of this process
    take turns here, on the event loop, instead of in SQLite's busy handler, which sleeps
    (1, 2, 5 ... 100 ms) between tries: under concurrent writers that sleeping, not the work,
    set the pace. A block left by an error rolls back before the next writer's turn. On
    PostgreSQL writers never wait for each other here (row locks order what must be ordered).
    ``writer`` names the caller in the turn's wait and hold metrics.

    Each statement of the block is a hop between the event loop and the connection's thread,
    and a busy loop makes every hop wait: a writer that can put its whole transaction in one
    piece of driver work holds the turn for one hop with ``driver_work.commit_in_turn``.
    """
    engine = session.get_bind().engine
    if engine.dialect.name != "sqlite":
        yield
        return
    turn = _SQLITE_WRITERS.get(engine)
    if turn is None:
        turn = _SQLITE_WRITERS.setdefault(engine, asyncio.Lock())
    asked = time.perf_counter()
    async with turn:
        began = time.perf_counter()
        TURN_WAITED.labels(writer).observe(began - asked)
        try:
            yield
        except BaseException:
            await session.rollback()
            raise
        finally:
            TURN_HELD.labels(writer).observe(time.perf_counter() - began)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session


def rows_matched(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched (its result is a CursorResult at run time)."""
    return cast(CursorResult[Any], result).rowcount
