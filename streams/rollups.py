"""Rebuilding materialized rollups from the raw events, for the buckets an insert may have missed.

An insert into ``access_events`` writes the table's part first and then one part per view; a
process killed in between leaves the event in the table (so a replay skips it) but missing
from some rollups. With the embedded engine one process is the only writer, so at start the
worker rebuilds the buckets of the last block the sink inserted: the only block that can have
been cut off. The rollups' own view definitions (``schemas/clickhouse``) give the queries, so
a rebuilt bucket holds exactly what the views would have written. A view that copies events
rather than summing them into buckets (``escalations``: a row per event, keeping the event's
``time`` as a column) has the block's time span itself rebuilt, by that column.

(Against a ClickHouse server, several workers write at once and a rebuild would race them;
there the sink re-sends a replayed block instead, which Keeper's deduplication makes safe.)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from infra.clickhouse import connect
from schemas.clickhouse import SINGLE_NODE, Placement, render_object, schema_objects

log = logging.getLogger("feedgrid.rollups")

_SOURCE = "access_events"
_GRAINS = {
    "toStartOfMinute(": timedelta(minutes=1),
    "toStartOfHour(": timedelta(hours=1),
    "toStartOfDay(": timedelta(days=1),
}
_VIEW = re.compile(r"TO (?P<target>\w+)\s+AS (?P<select>SELECT\b.*)$", re.DOTALL)
_TIME_COPY = re.compile(r"^\s*time AS (?P<column>\w+),?$", re.MULTILINE)
_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Rollup:
    view: str
    target: str
    select: str
    grain: timedelta | None  # None: the view copies events, each keeping its time
    time_column: str = "bucket"


@cache
def rollups() -> tuple[Rollup, ...]:
    """Every view fed by access_events, with its target, query and bucket size."""
    found = []
    for name, item in schema_objects().items():
        if item.placement is not Placement.view:
            continue
        statement = render_object(item, SINGLE_NODE)[0]
        match = _VIEW.search(statement)
        if match is None or f"FROM {_SOURCE}\n" not in match["select"] + "\n":
            continue
        grains = [size for marker, size in _GRAINS.items() if marker in match["select"]]
        copied = _TIME_COPY.search(match["select"])
        if len(grains) == 1:
            found.append(Rollup(name, match["target"], match["select"], grains[0]))
        elif not grains and copied is not None:
            found.append(Rollup(name, match["target"], match["select"], None, copied["column"]))
        else:
            raise ValueError(f"cannot tell the bucket size of view {name}")
    return tuple(found)


def _floor(moment: datetime, grain: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // grain) * grain


def rebuild(url: str, start: datetime, end: datetime) -> None:
    """Recomputes every rollup's buckets overlapping [start, end] from access_events."""
    client = connect(url)
    for rollup in rollups():
        if rollup.grain is None:  # copied events: exactly the span, to the millisecond
            low, high = start.replace(tzinfo=None), (end + _MILLISECOND).replace(tzinfo=None)
            column_type = "DateTime64(3, 'UTC')"
        else:
            low = _floor(start, rollup.grain).replace(tzinfo=None)
            high = (_floor(end, rollup.grain) + rollup.grain).replace(tzinfo=None)
            column_type = "DateTime('UTC')"
        bounds = {"low": low, "high": high}
        column = rollup.time_column
        client.command(
            f"ALTER TABLE {rollup.target} DELETE WHERE {column} >= {{low:{column_type}}} "
            f"AND {column} < {{high:{column_type}}}",
            parameters=bounds,
            settings={"mutations_sync": 2},
        )
        source = (
            f"FROM (SELECT * FROM {_SOURCE} FINAL WHERE time >= {{low:DateTime64(3, 'UTC')}} "
            f"AND time < {{high:DateTime64(3, 'UTC')}}) AS {_SOURCE}"
        )
        client.command(
            f"INSERT INTO {rollup.target} " + rollup.select.replace(f"FROM {_SOURCE}", source, 1),
            parameters=bounds,
        )


def repair_last_block(url: str) -> tuple[datetime, datetime] | None:
    """Rebuilds the buckets of the block inserted last; returns its time span, if any."""
    client = connect(url)
    last = client.query(
        f"SELECT sink_block FROM {_SOURCE} ORDER BY ingested_at DESC LIMIT 1"
    ).result_rows
    if not last:
        return None
    span = client.query(
        f"SELECT min(time), max(time) FROM {_SOURCE} WHERE sink_block = {{block:UInt64}}",
        parameters={"block": int(last[0][0])},
    ).result_rows[0]
    start, end = (moment.replace(tzinfo=UTC) for moment in span)
    rebuild(url, start, end)
    log.info("rollups rebuilt for the last stored block (%s .. %s)", start, end)
    return start, end
