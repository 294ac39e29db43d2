"""A transaction's prepared statements run as one piece of work on the database driver.

Through SQLAlchemy and aiosqlite each statement is a hop between the event loop and the
connection's thread (four before ``sqlite_adapter``: a cursor, the execution, the rows, the
close), each a future, a thread wake-up and a fight for the GIL, plus SQLAlchemy's own work
per statement. An access
request for a hundred feeds writes seven tables and the audit chain's head: a plain function
of prepared statements (:data:`DriverWork`) does all of it, on SQLite in the connection's own
thread in a single hop, on PostgreSQL through the session's connection statement by statement
(``run_sync``; asyncpg has no thread to hop to). One function, so both databases write the
same rows in the same order.

The work runs in the session's transaction: the caller commits (or rolls back) as before.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.bulk_insert import DriverInsert, bound_value, placeholder
from registry_api.db import WriteTurn, sqlite_thread, write_turn, writes_in_turn


@dataclass(frozen=True)
class DriverStatement:
    """One statement in the driver's own parameter style, its values already converted."""

    sql: str
    params: tuple[Any, ...]


def update_statement(
    table: Table,
    values: Mapping[str, Any],
    dialect: Dialect,
    *,
    where: Mapping[str, Any],
    within: tuple[str, Sequence[Any]] | None = None,
    returning: Sequence[str] = (),
    unindexed: Collection[str] = (),
) -> DriverStatement:
    """``UPDATE table SET values WHERE`` each ``where`` column equals its value (IS NULL for
    None) and the ``within`` column is one of its values, ``RETURNING`` columns, in the
    driver's own terms: every value converted as the column converts it.

    ``unindexed`` names ``where`` columns SQLite must not look rows up by, as
    :class:`registry_api.db.unindexed` does in a SQLAlchemy statement: an owner's claim of a
    request's hundred items otherwise read every pending item by the outcome's index."""
    quote = dialect.identifier_preparer.quote
    style = dialect.paramstyle
    params: list[Any] = []

    def bound(name: str, value: Any) -> str:
        params.append(bound_value(table, name, value, dialect))
        return placeholder(style, len(params))

    def column(name: str) -> str:
        hidden = name in unindexed and dialect.name == "sqlite"
        return f"+{quote(name)}" if hidden else quote(name)

    assignments = ", ".join(
        f"{quote(name)} = {bound(name, value)}" for name, value in values.items()
    )
    conditions = [
        f"{column(name)} IS NULL" if value is None else f"{column(name)} = {bound(name, value)}"
        for name, value in where.items()
    ]
    if within is not None:
        name, listed = within
        conditions.append(f"{quote(name)} IN ({', '.join(bound(name, value) for value in listed)})")
    sql = (
        f"UPDATE {dialect.identifier_preparer.format_table(table)} SET {assignments} "
        f"WHERE {' AND '.join(conditions)}"
    )
    if returning:
        sql += " RETURNING " + ", ".join(quote(name) for name in returning)
    return DriverStatement(sql, tuple(params))


class DriverCalls(Protocol):
    """What a piece of work may ask of the driver."""

    def execute(self, statement: DriverStatement) -> list[tuple[Any, ...]]:
        """Runs the statement; its rows (a RETURNING clause's), if any."""
        ...

    def executemany(self, insert: DriverInsert) -> None: ...


Result = TypeVar("Result")
DriverWork = Callable[[DriverCalls], Result]


class _SqliteCalls:
    """The work's calls on the sqlite3 connection itself, in the driver's thread. The driver's
    errors come out as SQLAlchemy's (``IntegrityError``, ``OperationalError`` ...), as they do
    through the session."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def execute(self, statement: DriverStatement) -> list[tuple[Any, ...]]:
        try:
            cursor = self.connection.execute(statement.sql, statement.params)
            try:
                return [tuple(row) for row in cursor.fetchall()]
            finally:
                cursor.close()
        except sqlite3.Error as error:
            raise _as_sqlalchemy(error, statement.sql, statement.params) from error

    def executemany(self, insert: DriverInsert) -> None:
        """The rows as multi-row INSERTs of up to ROWS_PER_STATEMENT rows (as many as the
        build's limit on a statement's variables allows). sqlite3 gives up the GIL around
        every statement's (and executemany's every row's) step and must take it back after:
        beside a busy event loop each taking back waits up to the interpreter's switch
        interval (5 ms). Fewer, larger statements are fewer waits: 400 rows of 12 columns
        beside a busy thread took 54 ms in statements of 64 rows, 15 ms in one (1.6 ms
        either way beside an idle one)."""
        params = insert.params
        if not params:
            return
        variables = self.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        per_statement = max(1, min(ROWS_PER_STATEMENT, variables // len(params[0])))
        try:
            for start in range(0, len(params), per_statement):
                rows = params[start : start + per_statement]
                values = [value for row in rows for value in row]
                self.connection.execute(_rows_of(insert.sql, len(rows)), values).close()
        except sqlite3.Error as error:
            raise _as_sqlalchemy(error, insert.sql, insert.params) from error


ROWS_PER_STATEMENT = 1_000


@lru_cache(maxsize=256)
def _rows_of(sql: str, rows: int) -> str:
    """A one-row ``INSERT ... VALUES (...)`` as an INSERT of ``rows`` rows."""
    head, _, values = sql.rpartition(" VALUES ")
    return f"{head} VALUES {', '.join([values] * rows)}"


def _as_sqlalchemy(error: sqlite3.Error, sql: str, params: Any) -> StatementError:
    return DBAPIError.instance(sql, params, error, sqlite3.Error, hide_parameters=True)


class _ConnectionCalls:
    """The work's calls through SQLAlchemy's connection (PostgreSQL, or any other driver)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def execute(self, statement: DriverStatement) -> list[tuple[Any, ...]]:
        result = self.connection.exec_driver_sql(statement.sql, statement.params)
        return [tuple(row) for row in result.fetchall()] if result.returns_rows else []

    def executemany(self, insert: DriverInsert) -> None:
        if insert.params:
            self.connection.exec_driver_sql(insert.sql, insert.params)


async def run_driver_work(session: AsyncSession, work: DriverWork[Result]) -> Result:
    """Runs ``work`` in the session's transaction, after the session's pending changes (so
    rows are written, and locks taken, in the order the caller made them)."""
    await session.flush()
    connection = await session.connection()
    if connection.dialect.name == "sqlite":
        sqlite_connection, run_in_thread = await sqlite_thread(session)
        if sqlite_connection is not None and run_in_thread is not None:
            calls = _SqliteCalls(sqlite_connection)
            result: Result = await run_in_thread(work, calls)
            return result
    return await connection.run_sync(lambda synchronous: work(_ConnectionCalls(synchronous)))


async def execute_insert(session: AsyncSession, insert: DriverInsert) -> None:
    """The prepared rows, in the caller's transaction: on SQLite as multi-row statements in
    one call on the connection's thread (see ``_SqliteCalls.executemany``), elsewhere through
    the driver's executemany."""
    if insert.params:
        await run_driver_work(session, lambda calls: calls.executemany(insert))


async def commit_in_turn(session: AsyncSession, writer: str, work: DriverWork[Result]) -> Result:
    """Runs ``work`` and commits, in the writers' turn (``db.WriteTurn``); ``writer`` names
    the caller in the turn's metrics.

    On SQLite the turn, the work and the commit are one call on the connection's thread: the
    turn is taken and given back there, held for the work and the commit alone, not for a
    hop per statement and another for the commit, each of which waits for a busy event loop.
    Elsewhere it is ``run_driver_work`` and a commit."""
    await session.flush()
    turn = write_turn(session)
    if turn is not None:
        sqlite_connection, run_in_thread = await sqlite_thread(session)
        if sqlite_connection is not None and run_in_thread is not None:
            whole = _committed_in_turn(turn, writer, sqlite_connection, work)
            result: Result = await run_in_thread(whole)
            # The session's side: nothing is left to write, and no transaction is open, so
            # no commit is sent to the thread (sqlite_adapter).
            await session.commit()
            return result
    async with writes_in_turn(session, writer):
        result = await run_driver_work(session, work)
        await session.commit()
    return result


def _committed_in_turn(
    turn: WriteTurn, writer: str, connection: sqlite3.Connection, work: DriverWork[Result]
) -> Callable[[], Result]:
    """The turn taken, ``work`` and then the commit (or the rollback), the turn given back:
    to run on the connection's thread."""
    asked = time.perf_counter()

    def whole() -> Result:
        began = turn.take(writer, asked)
        try:
            result = work(_SqliteCalls(connection))
            try:
                connection.commit()
            except sqlite3.Error as error:  # as SQLAlchemy's, as the work's statements' are
                raise _as_sqlalchemy(error, "COMMIT", ()) from error
            return result
        except BaseException:
            connection.rollback()
            raise
        finally:
            turn.give(writer, began)

    return whole
