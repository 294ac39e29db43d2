"""The analytics store as the API reads it: bound parameters, rows as dicts, off the loop.

The client is the process's one ``infra.clickhouse.connect(url)`` client (with chdb the
embedded sink writes through the same one). Calls run in a worker thread; the client
serializes its own calls on the engine handle, so the threads never interleave on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Histogram

from infra.clickhouse import connect

QUERY_SECONDS = Histogram(
    "feedgrid_analytics_query_seconds",
    "ClickHouse time of one analytics query",
    ["query"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)


def to_clickhouse_time(moment: datetime) -> datetime:
    """Bound DateTime parameters are read in the placeholder's zone (UTC): pass naive UTC."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def from_clickhouse_value(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class AnalyticsStore:
    def __init__(self, clickhouse_url: str) -> None:
        self.clickhouse_url = clickhouse_url

    def _run(self, name: str, sql: str, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        bound = {
            key: to_clickhouse_time(value) if isinstance(value, datetime) else value
            for key, value in parameters.items()
        }
        result = connect(self.clickhouse_url).query(sql, parameters=bound)
        names = result.column_names
        rows = [
            {name: from_clickhouse_value(value) for name, value in zip(names, row, strict=True)}
            for row in result.result_rows
        ]
        QUERY_SECONDS.labels(name).observe(time.perf_counter() - started)
        return rows

    async def rows(
        self, name: str, sql: str, parameters: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Runs a SELECT whose values all come through ``{name:Type}`` placeholders."""
        return await asyncio.to_thread(self._run, name, sql, parameters)
