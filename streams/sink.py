"""The ClickHouse sink: batched inserts that return only once ClickHouse holds the rows.

How offsets stay behind the data (see also ``streams/agents/batching.py``): an agent collects
Kafka events with Faust's ``stream.noack_take()``, which never acknowledges anything by itself,
turns them into rows, awaits :meth:`ClickHouseSink.write` for each table, and acknowledges the
events only after every write returned. Faust commits an offset only once the message and every
message before it on its partition are acknowledged, so a committed offset never passes a row
ClickHouse does not have.

``write`` does not give up: on any error it waits (exponential backoff, capped) and tries the
same batch again, so while ClickHouse is unavailable the agent simply stops pulling events;
Faust's buffers fill and the consumer pauses fetching. Nothing is lost and nothing needs a
restart: the next attempt that succeeds lets the stream move on.

Each event is stored once even though Kafka delivers at least once:

* before the first attempt, event ids already stored are dropped from the batch (a replay
  after a crash or a rebalance, or the outbox relay publishing a batch twice);
* every attempt of one batch carries the same ``insert_deduplication_token``, so an insert
  that succeeded although the client saw an error (a timeout, say) is not applied twice,
  neither to the table nor to the materialized views fed by it;
* the tables are ReplacingMergeTree on the same key, a last line of defence for raw queries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram

from streams.clickhouse import connect
from streams.tuning import StreamTuning

log = logging.getLogger("feedgrid.sink")

ROWS_WRITTEN = Counter("feedgrid_sink_rows_total", "Rows inserted into ClickHouse", ["table"])
DUPLICATES_DROPPED = Counter(
    "feedgrid_sink_duplicates_total",
    "Rows not inserted because their event id was stored",
    ["table"],
)
WRITE_ERRORS = Counter("feedgrid_sink_errors_total", "Failed insert attempts (retried)", ["table"])
SINK_AVAILABLE = Gauge("feedgrid_sink_available", "1 while ClickHouse accepts inserts, else 0")
INSERT_SECONDS = Histogram(
    "feedgrid_sink_insert_seconds",
    "Time to insert one batch, retries included",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# Ids per existence query: keeps the bound parameter well under HTTP URI limits.
_LOOKUP_CHUNK = 5_000
_INSERT_SETTINGS = {
    "date_time_input_format": "best_effort",
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "input_format_skip_unknown_fields": 0,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def encode_rows(rows: Iterable[dict[str, Any]]) -> bytes:
    """JSONEachRow: ClickHouse parses it natively, far faster than building columns in Python."""
    dumps = orjson.dumps
    return b"\n".join(dumps(row, default=_json_default) for row in rows)


class ClickHouseSink:
    def __init__(self, clickhouse_url: str, tuning: StreamTuning) -> None:
        self.clickhouse_url = clickhouse_url
        self.tuning = tuning
        self._available = True
        SINK_AVAILABLE.set(1)

    @property
    def available(self) -> bool:
        return self._available

    async def write(
        self,
        table: str,
        rows: Sequence[dict[str, Any]],
        *,
        unique_key: str | None = None,
        time_column: str = "time",
    ) -> int:
        """Inserts ``rows``; with ``unique_key``, rows whose key is already stored are skipped.

        Returns the number of rows inserted. Retries until ClickHouse accepts the batch; only
        cancellation ends it early (and then the events stay unacknowledged).
        """
        if not rows:
            return 0
        started = time.perf_counter()
        batch = list(rows)
        if unique_key is not None:
            batch = _first_of_each(batch, unique_key)
            stored = await self._retrying(
                table, lambda: self._stored_keys(table, batch, unique_key, time_column)
            )
            if stored:
                batch = [row for row in batch if str(row[unique_key]) not in stored]
                DUPLICATES_DROPPED.labels(table).inc(len(rows) - len(batch))
        if batch:
            payload = encode_rows(batch)
            token = self._token(table, batch, unique_key, payload)
            columns = list(batch[0].keys())
            await self._retrying(table, lambda: self._insert(table, columns, payload, token))
            ROWS_WRITTEN.labels(table).inc(len(batch))
        INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        return len(batch)

    @staticmethod
    def _token(
        table: str, batch: Sequence[dict[str, Any]], unique_key: str | None, payload: bytes
    ) -> str:
        digest = hashlib.sha256(table.encode())
        if unique_key is None:
            digest.update(payload)
        else:
            for key in sorted(str(row[unique_key]) for row in batch):
                digest.update(key.encode())
        return digest.hexdigest()

    def _insert(self, table: str, columns: list[str], payload: bytes, token: str) -> None:
        connect(self.clickhouse_url).raw_insert(
            table,
            columns,
            insert_block=payload,
            fmt="JSONEachRow",
            settings={**_INSERT_SETTINGS, "insert_deduplication_token": token},
        )

    def _stored_keys(
        self, table: str, batch: Sequence[dict[str, Any]], unique_key: str, time_column: str
    ) -> set[str]:
        client = connect(self.clickhouse_url)
        times = [row[time_column] for row in batch]
        # The time bounds let ClickHouse skip every part outside the batch's span.
        earliest = min(times) - timedelta(seconds=1)
        latest = max(times) + timedelta(seconds=1)
        keys = [str(row[unique_key]) for row in batch]
        stored: set[str] = set()
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            result = client.query(
                f"SELECT toString({unique_key}) FROM {table} "
                f"WHERE {time_column} BETWEEN {{earliest:DateTime64(3, 'UTC')}} "
                f"AND {{latest:DateTime64(3, 'UTC')}} "
                f"AND {unique_key} IN {{keys:Array(UUID)}}",
                parameters={
                    "earliest": _naive_utc(earliest),
                    "latest": _naive_utc(latest),
                    "keys": keys[start : start + _LOOKUP_CHUNK],
                },
            )
            stored.update(row[0] for row in result.result_rows)
        return stored

    async def _retrying(self, table: str, call: Any) -> Any:
        delay = self.tuning.retry_initial_seconds
        while True:
            try:
                result = await asyncio.to_thread(call)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                WRITE_ERRORS.labels(table).inc()
                if self._available:
                    log.warning(
                        "clickhouse rejected a batch for %s; consumption pauses and retries: %s",
                        table,
                        _short(error),
                    )
                self._available = False
                SINK_AVAILABLE.set(0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.tuning.retry_max_seconds)
                continue
            if not self._available:
                log.info("clickhouse accepts inserts again; consumption resumes")
                self._available = True
                SINK_AVAILABLE.set(1)
            return result


def _first_of_each(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    unique = []
    for row in rows:
        value = row[key]
        if value not in seen:
            seen.add(value)
            unique.append(row)
    return unique


def _naive_utc(moment: datetime) -> datetime:
    """Bound DateTime64 parameters are read in the placeholder's zone: pass naive UTC."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
