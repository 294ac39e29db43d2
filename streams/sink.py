"""The ClickHouse sink: batched inserts that return only once ClickHouse holds the rows.

How offsets stay behind the data (see also ``streams/pipeline.py`` and
``streams/agents/batching.py``): the batch path and the agents turn a batch of Kafka records
into rows, await the sink for each table, and commit (or acknowledge) the records only after
every write returned. Faust commits an offset only once the message and every message before
it on its partition are acknowledged, so a committed offset never passes a row ClickHouse does
not have.

The sink does not give up: on any error it waits (exponential backoff, capped) and tries the
same insert again, so while ClickHouse is unavailable the agent simply stops pulling events;
Faust's buffers fill and the consumer pauses fetching. Nothing is lost and nothing needs a
restart: the next attempt that succeeds lets the stream move on.

Access events are stored once, and counted once by the materialized rollups, although Kafka
delivers at least once (:meth:`ClickHouseSink.write_events`):

* Each insert is a *block* with an id, written into every row (``sink_block``) and used as
  its ``insert_deduplication_token``; every retry of the insert carries the same token, so an
  insert that succeeded although the client saw an error is not applied twice, neither to
  the table nor (``deduplicate_blocks_in_dependent_materialized_views``) to the views.
* Before inserting, event ids already stored are looked up and dropped: a replay after a
  crash or a rebalance, or the outbox relay publishing twice.
* A crash can cut an insert off between the table's part and the views' parts. Against a
  ClickHouse server (``resend_replayed_blocks``), an event stored from *this* Kafka record is
  a replay, and its stored block is re-inserted from the table itself with its own token:
  the table and every view that has the block skip it (Keeper keeps the tokens durably), a
  view that missed it gets it, whole. The embedded engine keeps its tokens in a log a killed
  process may not have flushed, so there the sink instead rebuilds, before its first insert
  and under the same retry as an insert, the rollup buckets of the last block inserted
  (``streams.rollups.repair_last_block``): the only block a crash can have cut off.
* The table is a ReplacingMergeTree on the same key, a last line of defence for raw queries.

Other tables (metadata, decisions, alerts, liveness) have no views: :meth:`write` relies on
their ReplacingMergeTree key and a content token.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
from prometheus_client import Counter, Gauge, Histogram

from infra.clickhouse import connect
from streams.columns import to_arrow
from streams.recent_ids import RecentIds
from streams.rollups import repair_last_block
from streams.tuning import StreamTuning

log = logging.getLogger("feedgrid.sink")

ROWS_WRITTEN = Counter("feedgrid_sink_rows_total", "Rows inserted into ClickHouse", ["table"])
DUPLICATES_DROPPED = Counter(
    "feedgrid_sink_duplicates_total",
    "Rows not inserted because their event id was stored",
    ["table"],
)
BLOCKS_REPAIRED = Counter(
    "feedgrid_sink_blocks_resent_total",
    "Stored blocks re-sent to the views after a replay (a no-op where they had them)",
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

T = TypeVar("T")

_LOW_64 = (1 << 64) - 1

# Ids per existence query: keeps the bound parameter well under HTTP URI limits.
_LOOKUP_CHUNK = 5_000
_INSERT_SETTINGS = {
    "date_time_input_format": "best_effort",
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "input_format_skip_unknown_fields": 0,
}
# A re-sent block must reach the views as the one block it was, to match its tokens there.
_RESEND_SETTINGS = {
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "max_threads": 1,
    "max_block_size": 10_000_000,
    "min_insert_block_size_rows": 10_000_000,
    "min_insert_block_size_bytes": 0,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def encode_rows(rows: Iterable[dict[str, Any]]) -> bytes:
    """JSONEachRow, for the small tables (decisions, alerts, states); events go as Arrow."""
    dumps = orjson.dumps
    return b"\n".join(dumps(row, default=_json_default) for row in rows)


def block_token(table: str, block: int) -> str:
    return f"{table}:{block:016x}"


def _block_id(keys: Iterable[str]) -> int:
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(key.encode())
    return int.from_bytes(digest.digest()[:8], "big")


class ClickHouseSink:
    def __init__(
        self, clickhouse_url: str, tuning: StreamTuning, *, resend_replayed_blocks: bool = False
    ) -> None:
        self.clickhouse_url = clickhouse_url
        self.tuning = tuning
        self.resend_replayed_blocks = resend_replayed_blocks
        # Embedded engine: this process is the only writer, so the last block's rollups can be
        # rebuilt without racing anyone, once, before this process inserts anything.
        self._repair_pending = not resend_replayed_blocks
        self._horizons: dict[int, int] | None = None
        # Ids stored lately (64-bit hashes): a relay's duplicate is looked up.
        self._recent = RecentIds()
        self._available = True
        SINK_AVAILABLE.set(1)

    @property
    def available(self) -> bool:
        return self._available

    # ------------------------------------------------------------------ events, exactly once

    def set_replay_horizons(self, horizons: dict[int, int]) -> None:
        """Per partition of the events' topic, the highest offset that may already be stored.

        Given at each assignment (:meth:`replay_horizons`). A record beyond it cannot have been
        stored from this topic, so it skips the look-up; a partition never given is looked up
        whole (a caller that says nothing gets the safe behaviour).
        """
        self._horizons = dict(horizons)

    async def load_replay_horizons(self, table: str, partitions: Iterable[int]) -> None:
        """Reads the horizons of ``partitions`` (after an assignment) and uses them."""
        wanted = list(partitions)
        horizons = await self._retrying(table, lambda: self.replay_horizons(table, wanted))
        self.set_replay_horizons(horizons)

    def replay_horizons(self, table: str, partitions: Iterable[int]) -> dict[int, int]:
        """The horizons of ``partitions`` as ClickHouse knows them (-1: nothing stored)."""
        client = connect(self.clickhouse_url)
        rows = client.query(
            "SELECT partition, max(offset) FROM sink_offsets "
            "WHERE table_name = {table:String} GROUP BY partition",
            parameters={"table": table},
        ).result_rows
        known = {int(partition): int(offset) for partition, offset in rows}
        horizons = {}
        for partition in partitions:
            if partition not in known:
                # Rows stored before sink_offsets existed (an upgrade): read them once.
                found = client.query(
                    f"SELECT max(kafka_offset), count() FROM {table} "
                    "WHERE kafka_partition = {partition:UInt32}",
                    parameters={"partition": partition},
                ).result_rows[0]
                known[partition] = int(found[0]) if int(found[1]) else -1
            horizons[partition] = known[partition]
        return horizons

    async def write_events(self, table: str, columns: dict[str, list[Any]]) -> int:
        """Stores access events, given as columns, once each (see the module notes).

        ``columns`` holds one list per column of the table, every list as long as the batch,
        among them ``event_id``, ``time``, ``kafka_partition`` and ``kafka_offset``; the sink
        adds ``sink_block``. Returns how many rows were inserted.
        """
        event_ids = columns.get("event_id") or []
        if not event_ids:
            return 0
        started = time.perf_counter()
        if self._repair_pending:
            url = self.clickhouse_url
            await self._retrying(table, lambda: repair_last_block(url))
            self._repair_pending = False
        keys = [str(event_id) for event_id in event_ids]
        unique = _first_positions(keys)
        partitions, offsets = columns["kafka_partition"], columns["kafka_offset"]
        hashes = _id_hashes(event_ids)
        suspects = self._replay_suspects(unique, partitions, offsets, hashes)
        stored: dict[str, tuple[int, int, int]] = {}
        if suspects:
            times = [columns["time"][i] for i in suspects]
            suspect_keys = [keys[i] for i in suspects]
            stored = await self._retrying(
                table, lambda: self._stored_events(table, suspect_keys, times)
            )
        fresh: list[int] = []
        replayed_blocks: set[int] = set()
        for position in unique:
            found = stored.get(keys[position])
            if found is None:
                fresh.append(position)
            elif self.resend_replayed_blocks and found[1:] == (
                partitions[position],
                offsets[position],
            ):
                replayed_blocks.add(found[0])
        if len(fresh) < len(keys):
            DUPLICATES_DROPPED.labels(table).inc(len(keys) - len(fresh))
        for block in sorted(replayed_blocks):
            await self._retrying(table, functools.partial(self._resend_block, table, block))
            BLOCKS_REPAIRED.labels(table).inc()
        if fresh:
            if len(fresh) < len(keys):
                columns = {name: [values[i] for i in fresh] for name, values in columns.items()}
            block = _block_id(keys[i] for i in fresh)
            columns = {**columns, "sink_block": [block] * len(fresh)}
            intents = _highest_offsets(columns["kafka_partition"], columns["kafka_offset"])
            arrow = to_arrow(columns)
            token = block_token(table, block)

            def insert() -> None:
                # The intent first: a crash after it and before the block only widens the
                # look-ups of the next start, never narrows them.
                self._record_offsets(table, intents, block)
                self._insert_arrow(table, arrow, token)

            await self._retrying(table, insert)
            ROWS_WRITTEN.labels(table).inc(len(fresh))
        self._recent.add(hashes)
        INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        return len(fresh)

    def _replay_suspects(
        self,
        unique: list[int],
        partitions: Sequence[int],
        offsets: Sequence[int],
        hashes: np.ndarray,
    ) -> list[int]:
        """Positions that may already be stored: at or before their partition's horizon, or
        an id seen in this process lately (the outbox relay publishing an event twice)."""
        recent = self._recent.contains(hashes)
        horizons = self._horizons
        suspects = []
        for position in unique:
            horizon = horizons.get(partitions[position]) if horizons is not None else None
            if horizon is None or offsets[position] <= horizon or recent[position]:
                suspects.append(position)
        return suspects

    def _record_offsets(self, table: str, intents: dict[int, int], block: int) -> None:
        connect(self.clickhouse_url).insert(
            "sink_offsets",
            [(table, partition, offset, block) for partition, offset in intents.items()],
            column_names=["table_name", "partition", "offset", "sink_block"],
        )

    def _insert_arrow(self, table: str, arrow: pa.Table, token: str) -> None:
        """Arrow columns: no Python object per value on the way into the engine."""
        connect(self.clickhouse_url).insert_arrow(
            table, arrow, settings={**_INSERT_SETTINGS, "insert_deduplication_token": token}
        )

    def _stored_events(
        self, table: str, keys: Sequence[str], times: Sequence[datetime]
    ) -> dict[str, tuple[int, int, int]]:
        """event_id -> (sink_block, kafka_partition, kafka_offset) of those already stored."""
        client = connect(self.clickhouse_url)
        # The time bounds let ClickHouse skip every part outside the batch's span.
        earliest = min(times) - timedelta(seconds=1)
        latest = max(times) + timedelta(seconds=1)
        stored: dict[str, tuple[int, int, int]] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            result = client.query(
                f"SELECT toString(event_id), sink_block, kafka_partition, kafka_offset "
                f"FROM {table} "
                "WHERE time BETWEEN {earliest:DateTime64(3, 'UTC')} "
                "AND {latest:DateTime64(3, 'UTC')} AND event_id IN {keys:Array(UUID)}",
                parameters={
                    "earliest": _naive_utc(earliest),
                    "latest": _naive_utc(latest),
                    "keys": list(keys[start : start + _LOOKUP_CHUNK]),
                },
            )
            for event_id, block, partition, offset in result.result_rows:
                stored[event_id] = (int(block), int(partition), int(offset))
        return stored

    def _resend_block(self, table: str, block: int) -> None:
        log.info("re-sending stored block %016x of %s to its views after a replay", block, table)
        connect(self.clickhouse_url).command(
            f"INSERT INTO {table} SELECT * FROM {table} WHERE sink_block = {{block:UInt64}}",
            parameters={"block": block},
            settings={**_RESEND_SETTINGS, "insert_deduplication_token": block_token(table, block)},
        )

    # ------------------------------------------------------------------ other tables

    async def write(self, table: str, rows: Sequence[dict[str, Any]]) -> int:
        """Inserts rows of a table without views; retries carry one content token."""
        if not rows:
            return 0
        started = time.perf_counter()
        payload = encode_rows(rows)
        token = f"{table}:{hashlib.sha256(payload).hexdigest()[:32]}"
        columns = list(rows[0].keys())
        await self._retrying(table, lambda: self._insert(table, columns, payload, token))
        ROWS_WRITTEN.labels(table).inc(len(rows))
        INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        return len(rows)

    # ------------------------------------------------------------------ plumbing

    def _insert(self, table: str, columns: list[str], payload: bytes, token: str) -> None:
        connect(self.clickhouse_url).raw_insert(
            table,
            columns,
            insert_block=payload,
            fmt="JSONEachRow",
            settings={**_INSERT_SETTINGS, "insert_deduplication_token": token},
        )

    async def _retrying(self, table: str, call: Callable[[], T]) -> T:
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


def _id_hashes(event_ids: Sequence[Any]) -> np.ndarray:
    """A 64-bit hash of each UUID (its two halves folded): for the recent-id window only; a
    hit is confirmed against ClickHouse before anything is dropped."""
    folded = [(value.int >> 64) ^ (value.int & _LOW_64) for value in map(_as_uuid, event_ids)]
    return np.fromiter(folded, dtype=np.uint64, count=len(folded))


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _highest_offsets(partitions: Sequence[int], offsets: Sequence[int]) -> dict[int, int]:
    highest: dict[int, int] = {}
    for partition, offset in zip(partitions, offsets, strict=True):
        if offset > highest.get(partition, -1):
            highest[partition] = offset
    return highest


def _first_positions(keys: Sequence[str]) -> list[int]:
    """The position of each key's first occurrence, in order."""
    seen: set[str] = set()
    positions = []
    for position, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            positions.append(position)
    return positions


def _naive_utc(moment: datetime) -> datetime:
    """Bound DateTime64 parameters are read in the placeholder's zone: pass naive UTC."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
