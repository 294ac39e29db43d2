"""aiosqlite under SQLAlchemy with one hop to the connection's thread per statement.

aiosqlite runs every call on its connection's own thread and answers through the event loop:
each call is a hop there and back, and on a busy loop each hop waits for the loop to come round
again (the demo replay: ~8 ms a wake-up on average, on the machine of 2026-12-03). SQLAlchemy's
adapter made four per statement (a cursor, its execution, its rows, its closing) and one for
every commit and rollback, needed or not: a session that only read ended with two rollbacks
(its own and the pool's when the connection came back). Here a statement is one call on the
thread, and a commit or rollback with no transaction open is not sent at all: sqlite3 does
nothing then (it opens a transaction before a write, never for a read), so the outcome is the
same. Server-side cursors (``stream()``) keep SQLAlchemy's own behaviour.

Built on SQLAlchemy's aiosqlite adapter classes and aiosqlite's ``Connection._execute`` (its
way of running a function on its thread, which ``db.sqlite_thread`` uses too); the tests
count the hops, so a version that changes either is caught, not silently slower.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)

Used = TypeVar("Used")


def sqlite3_connection(driver_connection: Any) -> sqlite3.Connection | None:
    """The sqlite3 connection under an aiosqlite connection (None if this aiosqlite keeps it
    elsewhere, or it is closed)."""
    connection = getattr(driver_connection, "_connection", None)
    return connection if isinstance(connection, sqlite3.Connection) else None


def one_hop_dbapi() -> AsyncAdapt_aiosqlite_dbapi:
    """The DBAPI module to give ``create_async_engine(..., module=...)`` for a SQLite URL."""
    return _OneHopDBAPI(aiosqlite, sqlite3)


class _OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        if type(adapted) is not AsyncAdapt_aiosqlite_connection:  # the sync fallback: as is
            return adapted
        return _OneHopConnection(self, adapted._connection)


class _OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    def cursor(self, server_side: bool = False) -> AsyncAdapt_aiosqlite_cursor:
        if server_side:
            return super().cursor(server_side=True)
        return _OneHopCursor(self)

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()

    def _in_transaction(self) -> bool:
        """Whether sqlite3 has a transaction open (True where that cannot be told: the
        driver's own call then decides, and reports a closed connection as it always did)."""
        sqlite_connection = sqlite3_connection(self._connection)
        if sqlite_connection is None:
            return True
        try:
            return sqlite_connection.in_transaction
        except sqlite3.Error:
            return True


class _OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A statement and its rows in one call on the connection's thread."""

    __slots__ = ()

    def execute(self, operation: Any, parameters: Any = None) -> None:
        def run(cursor: sqlite3.Cursor) -> tuple[Any, list[Any] | None, Any, int]:
            cursor.execute(operation, () if parameters is None else parameters)
            description = cursor.description
            rows = cursor.fetchall() if description else None
            return description, rows, cursor.lastrowid, cursor.rowcount

        description, rows, lastrowid, rowcount = self._on_thread(run)
        if description:
            self.description = description
            self.lastrowid = self.rowcount = -1
            self._rows = deque(rows or ())
        else:
            self.description = None
            self.lastrowid = lastrowid
            self.rowcount = rowcount

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        def run(cursor: sqlite3.Cursor) -> tuple[Any, int]:
            cursor.executemany(operation, seq_of_parameters)
            return cursor.lastrowid, cursor.rowcount

        self.description = None
        self.lastrowid, self.rowcount = self._on_thread(run)

    def _on_thread(self, use: Callable[[sqlite3.Cursor], Used]) -> Used:
        """``use`` with a sqlite3 cursor of its own, closed after, in one call on the
        connection's thread; errors as SQLAlchemy's adapter reports them."""
        connection = cast(aiosqlite.Connection, self._connection)

        def run() -> Used:
            cursor = connection._conn.cursor()
            try:
                return use(cursor)
            finally:
                cursor.close()

        try:
            result: Used = self.await_(connection._execute(run))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        return result
