"""Many-row INSERTs through the driver's executemany, with values prepared beforehand.

SQLAlchemy processes every bound value (JSON, timestamps) in the event-loop thread while it
executes; for the thousands of audit and outbox rows the hooks write per second that stalls
every request waiting on the loop. Here the same processing (the columns' own bind
processors, so the stored values are identical) runs wherever the caller prepares the rows,
and the loop only awaits the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import JSON, DateTime, Table
from sqlalchemy.engine import Dialect


@dataclass(frozen=True)
class DriverInsert:
    sql: str
    params: list[tuple[Any, ...]]


def placeholder(paramstyle: str, position: int) -> str:
    """The driver's placeholder of the ``position``-th (from 1) parameter of a statement."""
    if paramstyle == "qmark":
        return "?"
    if paramstyle == "numeric_dollar":
        return f"${position}"
    if paramstyle in ("format", "pyformat"):
        return "%s"
    if paramstyle == "numeric":
        return f":{position}"
    raise ValueError(f"unsupported DBAPI paramstyle {paramstyle!r}")


def placeholders(paramstyle: str, count: int) -> str:
    return ", ".join(placeholder(paramstyle, position) for position in range(1, count + 1))


Processor = Callable[[Any], Any]


def _json_text(value: Any) -> Any:
    # orjson instead of the JSON type's json.dumps: the same document, several times faster.
    return None if value is None else orjson.dumps(value).decode()


def _processor(table: Table, name: str, dialect: Dialect) -> Processor | None:
    column_type = table.c[name].type
    if isinstance(column_type, JSON):
        return _json_text
    return column_type._cached_bind_processor(dialect)  # the column's own conversion


def bound_value(table: Table, name: str, value: Any, dialect: Dialect) -> Any:
    """``value`` as the driver receives it for the column (the column's own conversion)."""
    processor = _processor(table, name, dialect)
    return value if processor is None else processor(value)


def _is_timestamp(table: Table, name: str) -> bool:
    column_type = table.c[name].type
    return isinstance(column_type, DateTime) or isinstance(
        getattr(column_type, "impl", None), DateTime
    )


def _remembering(processor: Processor) -> Processor:
    """The processor, remembering its answers for one batch: a batch's rows mostly share
    their timestamps, and SQLite's text form of a timestamp is slow to write."""
    answers: dict[Any, Any] = {}

    def process(value: Any) -> Any:
        found = answers.get(value, _UNSEEN)
        if found is _UNSEEN:
            found = answers[value] = processor(value)
        return found

    return process


_UNSEEN = object()


@lru_cache(maxsize=64)
def _statement(
    table: Table, columns: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[tuple[int, Processor, bool], ...]]:
    preparer = dialect.identifier_preparer
    names = ", ".join(preparer.quote(name) for name in columns)
    sql = (
        f"INSERT INTO {preparer.format_table(table)} ({names}) "
        f"VALUES ({placeholders(dialect.paramstyle, len(columns))})"
    )
    processors = tuple(
        (index, processor, _is_timestamp(table, name))
        for index, name in enumerate(columns)
        if (processor := _processor(table, name, dialect)) is not None
    )
    return sql, processors


def prepare_insert(
    table: Table, rows: Sequence[Mapping[str, Any]], dialect: Dialect
) -> DriverInsert:
    """CPU only, no I/O. Every row must have the first row's keys."""
    columns = tuple(rows[0])
    sql, statement_processors = _statement(table, columns, dialect)
    processors = [
        (index, _remembering(processor) if timestamp else processor)
        for index, processor, timestamp in statement_processors
    ]
    params = []
    for row in rows:
        values = [row[name] for name in columns]
        for index, processor in processors:
            values[index] = processor(values[index])
        params.append(tuple(values))
    return DriverInsert(sql, params)
