"""The feeds table straight through the SQLite driver, for the two hot paths.

SQLAlchemy's per-value type processing dominates when a bulk import writes 57,000 rows or a
search reads a page of 100. These helpers encode and decode exactly as the column types do
(``JsonDocument``: orjson text; ``UtcDateTime``: SQLite's DATETIME text of the UTC time), so
rows written or read here are the rows SQLAlchemy would write or read.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.db import UtcDateTime
from registry_api.feeds.models import JsonDocument, feeds_table

COLUMNS = [column.name for column in feeds_table.columns]
_JSON = [i for i, column in enumerate(feeds_table.columns) if isinstance(column.type, JsonDocument)]
_TIME = [i for i, column in enumerate(feeds_table.columns) if isinstance(column.type, UtcDateTime)]
_INSERT = f"INSERT INTO feeds ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM feeds WHERE id IN "
_values_in_column_order = operator.itemgetter(*COLUMNS)


def is_sqlite(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "sqlite"


@lru_cache(maxsize=4096)
def sqlite_time(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DATETIME stores for a UTC time. Cached: the liveness
    applier formats every reported feed's ``last_seen``, and the reports of one heartbeat
    request share its time (a miss costs ~3 us, a hit ~0.1 us)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def rfc3339_from_sqlite(stored: str) -> str:
    """'2026-05-01 08:00:00.250000' -> '2026-05-01T08:00:00.25Z'-style RFC 3339 UTC text,
    written the way orjson writes a datetime (no fraction when it is zero)."""
    text = stored.replace(" ", "T", 1)
    return (text[:-7] if text.endswith(".000000") else text) + "Z"


def encode_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Column values (as ``content_values`` and friends build them) as driver parameters."""
    encoded = []
    for values in rows:
        row = list(_values_in_column_order(values))
        for position in _JSON:
            if row[position] is not None:
                row[position] = orjson.dumps(row[position]).decode()
        for position in _TIME:
            if row[position] is not None:
                row[position] = sqlite_time(row[position])  # cached: an import shares its times
        encoded.append(tuple(row))
    return encoded


async def insert_rows(session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
    connection = await session.connection()
    await connection.exec_driver_sql(_INSERT, rows)


def select_sql(count: int) -> str:
    """The driver's SELECT of ``count`` feeds' full rows by id (qmark placeholders)."""
    return f"{_SELECT}({', '.join('?' * count)})"


def decode_row(values: Sequence[Any]) -> dict[str, Any]:
    """A row as :data:`select_sql` reads it, JSON decoded and times as RFC 3339 text."""
    row = list(values)
    for position in _JSON:
        if row[position] is not None:
            row[position] = orjson.loads(row[position])
    for position in _TIME:
        if row[position] is not None:
            row[position] = rfc3339_from_sqlite(row[position])
    return dict(zip(COLUMNS, row, strict=True))


async def select_rows(session: AsyncSession, feed_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Rows by id, JSON decoded and times as RFC 3339 text (ready to render)."""
    connection = await session.connection()
    result = await connection.exec_driver_sql(select_sql(len(feed_ids)), tuple(feed_ids))
    rows: dict[str, dict[str, Any]] = {}
    for values in result.all():
        mapping = decode_row(values)
        rows[mapping["id"]] = mapping
    return rows
