"""The sink against real chdb: each event once in the table and once in every rollup, whatever
the replays (a crash between the table's part and the views' parts, a retried insert, the
outbox publishing twice)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.clickhouse import connect, disconnect
from infra.clickhouse_migrations import apply_migrations
from schemas.clickhouse import Placement, schema_objects
from streams.access import ACCESS_COLUMNS, access_row
from streams.catalog import FeedFacts
from streams.decoding import AccessCloudEvent
from streams.rollups import repair_last_block
from streams.sink import ClickHouseSink, block_token, encode_rows
from streams.tuning import load_tuning

VIEWS = sorted(name for name, item in schema_objects().items() if item.placement is Placement.view)


@pytest.fixture
def analytics_url(tmp_path: Path) -> Iterator[str]:
    url = f"chdb://{tmp_path / 'analytics'}"
    apply_migrations(url)
    yield url
    disconnect(url)


def retrieval_rows(count: int, partition: int = 0, first_offset: int = 0) -> list[dict[str, Any]]:
    start = datetime.now(UTC) - timedelta(minutes=5)
    rows = []
    for index in range(count):
        event = AccessCloudEvent.model_validate(
            {
                "id": str(uuid.uuid4()),
                "type": "feedgrid.retrieval.started",
                "time": (start + timedelta(seconds=index)).isoformat(),
                "data": {
                    "feed_id": f"f-{index % 3}",
                    "requester_department": "lz-jtj",
                    "requester_user": "u",
                },
            }
        )
        facts = FeedFacts(1, "lz-psb", "camera", "620102", "", "")
        rows.append(
            dict(
                zip(
                    ACCESS_COLUMNS,
                    access_row(event, facts, 1, partition, first_offset + index),
                    strict=True,
                )
            )
        )
    return rows


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as the batch path hands them to the sink: one list per column."""
    return {name: [row[name] for row in rows] for name in ACCESS_COLUMNS}


ROLLUPS = 9


def figures(url: str) -> tuple[int, list[int]]:
    client = connect(url)
    stored = int(client.query("SELECT count() FROM access_events").result_rows[0][0])
    rollups = [
        int(client.query(f"SELECT sum(retrievals) FROM {table}").result_rows[0][0])
        for table in (
            "usage_departments_minute",
            "usage_departments_hour",
            "usage_departments_day",
            "usage_feeds_minute",
            "usage_feeds_hour",
            "feed_activity_day",
            "usage_feeds_hour_by_feed",
            # every retrieval of these rows is counted under its owner and its requester
            "usage_scopes_day WHERE scope_department = 'lz-psb'",
            "usage_scopes_day WHERE scope_department = 'lz-jtj'",
        )
    ]
    return stored, rollups


async def test_a_replayed_block_reaches_the_views_a_crash_cut_it_off_from(
    analytics_url: str,
) -> None:
    """The server path: the replayed block is re-sent, and deduplicated where it arrived."""
    sink = ClickHouseSink(analytics_url, load_tuning(), resend_replayed_blocks=True)
    rows = retrieval_rows(50)
    client = connect(analytics_url)
    for view in VIEWS:  # the crash: the table's part is written, the views' parts are not
        client.command(f"DETACH TABLE {view}")
    assert await sink.write_events("access_events", columns([dict(row) for row in rows])) == 50
    for view in VIEWS:
        client.command(f"ATTACH TABLE {view}")
    assert figures(analytics_url) == (50, [0] * ROLLUPS)

    assert await sink.write_events("access_events", columns([dict(row) for row in rows])) == 0
    assert figures(analytics_url) == (50, [50] * ROLLUPS)
    assert await sink.write_events("access_events", columns([dict(row) for row in rows[:20]])) == 0
    assert figures(analytics_url) == (50, [50] * ROLLUPS)


async def test_the_embedded_worker_rebuilds_the_buckets_of_the_last_block(
    analytics_url: str,
) -> None:
    """The embedded path: at start the rollups of the last block are rebuilt from the table."""
    sink = ClickHouseSink(analytics_url, load_tuning())
    assert await sink.write_events("access_events", columns(retrieval_rows(40))) == 40
    client = connect(analytics_url)
    for view in VIEWS:
        client.command(f"DETACH TABLE {view}")
    last = retrieval_rows(25, first_offset=100)
    assert await sink.write_events("access_events", columns(last)) == 25  # cut off from the views
    for view in VIEWS:
        client.command(f"ATTACH TABLE {view}")
    assert figures(analytics_url) == (65, [40] * ROLLUPS)
    assert repair_last_block(analytics_url) is not None
    assert figures(analytics_url) == (65, [65] * ROLLUPS)
    assert repair_last_block(analytics_url) is not None  # again: nothing changes
    assert figures(analytics_url) == (65, [65] * ROLLUPS)
    assert await sink.write_events("access_events", columns([dict(row) for row in last])) == 0
    assert figures(analytics_url) == (65, [65] * ROLLUPS)


async def test_a_record_published_twice_is_stored_once(analytics_url: str) -> None:
    sink = ClickHouseSink(analytics_url, load_tuning())
    rows = retrieval_rows(30)
    assert await sink.write_events("access_events", columns([dict(row) for row in rows])) == 30
    again = [dict(row, kafka_offset=row["kafka_offset"] + 1000) for row in rows]  # new records
    mixed = again[:10] + retrieval_rows(5, first_offset=5000)
    assert await sink.write_events("access_events", columns(mixed)) == 5
    assert figures(analytics_url) == (35, [35] * ROLLUPS)


async def test_an_insert_retried_after_it_succeeded_counts_once(analytics_url: str) -> None:
    sink = ClickHouseSink(analytics_url, load_tuning())
    rows = retrieval_rows(10)
    for row in rows:
        row["sink_block"] = 42
    payload = encode_rows(rows)
    for _ in range(2):  # the client saw an error after ClickHouse had the insert
        sink._insert("access_events", list(rows[0]), payload, block_token("access_events", 42))
    assert figures(analytics_url) == (10, [10] * ROLLUPS)


def test_the_last_block_rebuild_restores_the_escalations_it_cut_off(analytics_url: str) -> None:
    """The escalations view copies events (no buckets): the rebuild restores the block's
    time span by the copied time, exactly, and a second rebuild adds nothing."""
    client = connect(analytics_url)
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    names = [
        "event_id", "time", "type", "request_id", "feed_id", "owner_department",
        "requester_department", "requested_at", "sink_block",
    ]  # fmt: skip

    def escalations(block: int, first: int, count: int) -> list[list[Any]]:
        return [
            [
                uuid.uuid4(),
                start + timedelta(seconds=number, milliseconds=7),
                "access.escalated",
                f"r-{number}",
                f"f-{number % 3}",
                "lz-psb",
                "lz-jtj",
                start - timedelta(days=6),
                block,
            ]  # fmt: skip
            for number in range(first, first + count)
        ]

    def stored() -> list[tuple[Any, ...]]:
        rows = client.query(
            "SELECT request_id, feed_id, escalated_at FROM escalations ORDER BY request_id"
        ).result_rows
        return [tuple(row) for row in rows]

    client.insert("access_events", escalations(1, 0, 30), column_names=names)
    client.command("DETACH TABLE escalations_mv")
    client.insert("access_events", escalations(2, 30, 12), column_names=names)  # cut off
    client.command("ATTACH TABLE escalations_mv")
    assert len(stored()) == 30
    assert repair_last_block(analytics_url) is not None
    raw = [
        tuple(row)
        for row in client.query(
            "SELECT request_id, feed_id, time FROM access_events ORDER BY request_id"
        ).result_rows
    ]
    assert stored() == raw and len(raw) == 42
    assert repair_last_block(analytics_url) is not None  # again: nothing added
    assert stored() == raw
