"""The registry database: one async engine per process, sessions per request."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
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
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from infra.gil import turn_given, turn_taken
from registry_api.sqlite_adapter import one_hop_dbapi, sqlite3_connection

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class unindexed(FunctionElement[Any]):  # noqa: N801 (used as a SQL function is)
    """A column SQLite must not look rows up by (its unary ``+``; plain on other databases):
    a condition on a column of few values, or mostly NULL, that leads an index of its own.

    SQLite without statistics (no ANALYZE has run) guesses ten rows for an equality on an
    index's first column, so ``outcome = 'pending'`` or ``revoked_at IS NULL`` beat a hundred
    primary-key lookups or a short range of due times, and the statement read every pending
    item or every grant never revoked. PostgreSQL plans from its statistics."""

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: ColumnElement[Any] | InstrumentedAttribute[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(unindexed)
def _unindexed(element: unindexed, compiler: SQLCompiler, **options: Any) -> str:
    return compiler.process(element.clauses, **options)


@compiles(unindexed, "sqlite")
def _unindexed_on_sqlite(element: unindexed, compiler: SQLCompiler, **options: Any) -> str:
    return "+" + compiler.process(element.clauses, **options)


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
            # One hop to the connection's thread per statement, none for a commit or rollback
            # with nothing to end (see sqlite_adapter).
            module=one_hop_dbapi(),
            connect_args={"timeout": SQLITE_WAIT_SECONDS},
            pool_timeout=SQLITE_WAIT_SECONDS,
            # The connection returned last is handed out next. Each pooled connection has its
            # own page cache, and SQLite empties it whenever another connection has written
            # since its last transaction: handed out in turn (the pool's default), every
            # request met a cold cache and read its pages again (an access request for 100
            # feeds: 62 -> 27 ms p50, 68 -> 31 ms of CPU, measured on the demo city).
            pool_use_lifo=True,
            # Room for every session the all-in-one holds at its busiest (eight requests, the
            # relay, the appliers, the keepers): with the default five, each session past them
            # opened a connection (a thread, seven PRAGMAs, a cold page cache) and closed it
            # after, 500 connections during the demo's replay.
            pool_size=16,
            max_overflow=16,
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
        # Statement journals in memory: a write statement in a longer transaction (an access
        # request's executemany of its 300 audit links, with constraints to check) keeps the
        # pages it changes in a statement journal, spilled past 64 KiB to a temporary file
        # under /var/tmp, created, written page by page and unlinked per transaction.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
        cursor.close()


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


class WriteTurn:
    """The turn of a SQLite registry's writers in this process: a lock taken and given back
    on the connections' own threads, where their statements run.

    Taken on the event loop (an ``asyncio.Lock``, as it was), the turn was given back only
    when the loop came round to the writer again after its commit: every request, heartbeat
    batch or page the loop was busy with at that moment was added to the turn, and the next
    writer waited for it (the demo's replay: the turn held ~85 % of the time). Here a writer
    whose transaction is one piece of driver work (``driver_work.commit_in_turn``) takes the
    turn, writes, commits and gives it back on its connection's thread, and the next one
    starts at once, whatever the loop is doing. A writer going statement by statement
    (:func:`writes_in_turn`) waits for the turn on its connection's thread too (the loop
    stays free) and gives it back after its commit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shortened = False  # the holder's GIL switch interval (infra.gil), one at a time

    def take(self, writer: str, asked: float) -> float:
        """Blocks until the turn is this writer's (not on the event loop); returns when.
        While it is, the writer's thread gets the GIL back soon after each statement
        (``infra.gil``) instead of within the interpreter's 5 ms."""
        self._lock.acquire()
        self._shortened = turn_taken()
        began = time.perf_counter()
        TURN_WAITED.labels(writer).observe(began - asked)
        return began

    def give(self, writer: str, began: float) -> None:
        TURN_HELD.labels(writer).observe(time.perf_counter() - began)
        turn_given(self._shortened)
        self._lock.release()


class _Ticket:
    """A statement writer's wait for the turn, which its waiter may abandon (cancelled): a
    turn taken for an abandoned ticket is given back at once, by whichever side comes last."""

    def __init__(self, turn: WriteTurn, writer: str, asked: float) -> None:
        self.turn = turn
        self.writer = writer
        self.asked = asked
        self.began = 0.0
        self._state = "waiting"  # -> holding | abandoned
        self._guard = threading.Lock()

    def take(self) -> float:
        began = self.turn.take(self.writer, self.asked)
        with self._guard:
            if self._state == "abandoned":
                self.turn.give(self.writer, began)
            else:
                self._state, self.began = "holding", began
        return began

    def abandon(self) -> None:
        with self._guard:
            if self._state == "holding":
                self.turn.give(self.writer, self.began)
            self._state = "abandoned"


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, WriteTurn] = weakref.WeakKeyDictionary()


def write_turn(session: AsyncSession) -> WriteTurn | None:
    """The writers' turn of the session's engine; None where writers need none (not SQLite:
    on PostgreSQL row locks order what must be ordered)."""
    engine = session.get_bind().engine
    if engine.dialect.name != "sqlite":
        return None
    turn = _SQLITE_WRITERS.get(engine)
    if turn is None:
        turn = _SQLITE_WRITERS.setdefault(engine, WriteTurn())
    return turn


@contextlib.asynccontextmanager
async def writes_in_turn(session: AsyncSession, writer: str) -> AsyncIterator[None]:
    """Around a transaction's writes and its commit: on SQLite, the writers of this process
    take turns (:class:`WriteTurn`) instead of meeting in SQLite's busy handler, which sleeps
    (1, 2, 5 ... 100 ms) between tries: under concurrent writers that sleeping, not the work,
    set the pace. A block left by an error rolls back before the next writer's turn. On
    PostgreSQL writers never wait for each other here. ``writer`` names the caller in the
    turn's wait and hold metrics.

    Each statement of the block is a hop between the event loop and the connection's thread,
    and a busy loop makes every hop wait, the turn held meanwhile: a writer that can put its
    whole transaction in one piece of driver work uses ``driver_work.commit_in_turn``.
    """
    turn = write_turn(session)
    if turn is None:
        yield
        return
    ticket = _Ticket(turn, writer, time.perf_counter())
    _, run_in_thread = await sqlite_thread(session)
    try:
        if run_in_thread is not None:
            began = await run_in_thread(ticket.take)  # the connection's thread waits
        else:
            began = await asyncio.to_thread(ticket.take)
    except BaseException:  # cancelled while waiting: the turn, if taken, goes back
        ticket.abandon()
        raise
    try:
        yield
    except BaseException:
        await session.rollback()
        raise
    finally:
        turn.give(writer, began)


async def sqlite_thread(
    session: AsyncSession,
) -> tuple[sqlite3.Connection | None, Callable[..., Any] | None]:
    """The sqlite3 connection under the session and aiosqlite's way of running a function in
    its thread (``Connection._execute``: aiosqlite has no public name for it), or Nones where
    this aiosqlite differs or the connection commits each statement (no transaction to join).
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    run_in_thread = getattr(driver, "_execute", None)
    sqlite_connection = sqlite3_connection(driver)
    if (
        not callable(run_in_thread)
        or sqlite_connection is None
        or sqlite_connection.isolation_level is None
    ):
        return None, None
    return sqlite_connection, run_in_thread


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session


def rows_matched(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched (its result is a CursorResult at run time)."""
    return cast(CursorResult[Any], result).rowcount
