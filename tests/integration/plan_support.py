"""Which statements a piece of code runs, and how SQLite plans them: for tests that hold a
read to its index rather than its time."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

Statement = tuple[str, Any]  # SQL text, its parameters


@contextlib.contextmanager
def statements_run(engine: AsyncEngine) -> Iterator[list[Statement]]:
    """Every statement the engine runs inside the block, with its parameters."""
    seen: list[Statement] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, _many: bool) -> None:
        seen.append((sql, params))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def sqlite_file(database_url: str) -> Path | None:
    """The database file of a SQLite URL; None for another database."""
    return Path(database_url.split("///", 1)[1]) if database_url.startswith("sqlite") else None


def sqlite_plan(path: Path, sql: str, params: Any) -> list[str]:
    """SQLite's plan of a statement, a line per step (EXPLAIN QUERY PLAN's detail column)."""
    with sqlite3.connect(path) as connection:
        return [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
