"""The narrowed rankings and the per-feed retrieval spans answer exactly what the raw events do.

Top feeds are narrowed by bounds read from the per-day rollups (a department's own rows in
``usage_scopes_day``) before the contenders' hours are merged, from the rollup ordered by
feed (``usage_feeds_hour_by_feed``) or from the bucket-ordered ones, and dormant feeds are
told from each feed's first and last retrieval hour (``feed_retrieval_span``). Both must
equal the same answer computed here straight from ``access_events`` (FINAL), for the operator
and for a department, with filters, over periods of whole days with hours at either end,
shorter than a day, and in the past. The store is real chdb; the events go in through
``access_events`` and its materialized views, as the sink's inserts do; and an existing store
gets the new tables backfilled when it migrates.
"""

from __future__ import annotations

import logging
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.clickhouse import connect, disconnect
from infra.clickhouse_migrations import _backfill, apply_migrations
from registry_api.analytics import service as service_module
from registry_api.analytics.schemas import (
    Granularity,
    GroupBy,
    Period,
    Scope,
    TopMetric,
    UsageFilters,
)
from registry_api.analytics.service import AnalyticsService, floor_time, hour_numbers
from registry_api.analytics.store import AnalyticsStore, to_clickhouse_time
from schemas.clickhouse import Placement, backfill_statements, load_migrations

OWNERS = ["lz-psb", "lz-jtj", "lz-cgj", "lz-hbj"]
REQUESTERS = [*OWNERS, "lz-sjj", "lz-wjw"]
FEEDS = 120  # feeds with traffic; the catalog holds a few more that never had any
CATALOG = 130
RETRIEVALS = 6_000
DAYS = 12


@dataclass(frozen=True)
class Store:
    url: str
    now: datetime


def _feed(index: int) -> str:
    return f"feed-{index:03d}"


def _facts(index: int) -> dict[str, str]:
    return {
        "owner_department": OWNERS[index % 4],
        "kind": "sensor" if index % 5 == 0 else "camera",
        "region": ("620102", "620103", "620104")[index % 3],
    }


def _access_rows(now: datetime, seed: int = 7) -> list[dict[str, Any]]:
    """Retrievals (started, and ended with bytes and seconds) and denials over DAYS days,
    skewed towards the first feeds as real use is."""
    rng = random.Random(seed)
    rows = []
    for number in range(RETRIEVALS):
        index = int(FEEDS * rng.random() ** 2.5)
        moment = now - timedelta(seconds=rng.randrange(DAYS * 86_400))
        requester = rng.choice(REQUESTERS)
        common = {
            "feed_id": _feed(index),
            **_facts(index),
            "requester_department": requester,
            "requester_user": f"{requester}-u{rng.randrange(8)}",
            "time": moment,
        }
        rows.append({**common, "type": "retrieval.started", "bytes": 0, "duration_seconds": 0.0})
        rows.append(
            {
                **common,
                "type": "retrieval.ended",
                "bytes": rng.randrange(1_000, 9_000_000),
                # quarter seconds: sums are exact, whatever order they are added in
                "duration_seconds": rng.randrange(4, 2_400) / 4,
            }
        )
        if number % 25 == 0:
            rows.append({**common, "type": "retrieval.denied", "bytes": 0, "duration_seconds": 0.0})
    return rows


def _insert_access(url: str, rows: list[dict[str, Any]]) -> None:
    names = [
        "event_id",
        "time",
        "type",
        "feed_id",
        "owner_department",
        "requester_department",
        "requester_user",
        "kind",
        "region",
        "bytes",
        "duration_seconds",
    ]
    data = [
        [uuid.uuid4(), to_clickhouse_time(row["time"])] + [row[name] for name in names[2:]]
        for row in rows
    ]
    for start in range(0, len(data), 5_000):  # several blocks, as the sink inserts them
        connect(url).insert("access_events", data[start : start + 5_000], column_names=names)


def _insert_catalog(url: str, now: datetime) -> None:
    client = connect(url)
    feeds = []
    for index in range(CATALOG):
        facts = _facts(index)
        status = "unknown" if index % 17 == 0 else "online"
        retired = index % 29 == 28
        feeds.append(
            [_feed(index), 1, uuid.uuid4(), f"camera {index}", facts["owner_department"]]
            + [facts["kind"], facts["region"], status, retired]
        )
    client.insert(
        "feed_metadata",
        feeds,
        column_names=[
            "feed_id", "version", "event_id", "name", "owner_department", "kind", "region",
            "status", "retired",
        ],
    )  # fmt: skip
    transitions = []
    for index in range(0, CATALOG, 3):
        status = "offline" if index % 9 == 0 else "online"
        changed = to_clickhouse_time(now - timedelta(hours=index))
        transitions.append(
            [uuid.uuid4(), _feed(index), _facts(index)["owner_department"], status, changed]
        )
    client.insert(
        "feed_status",
        transitions,
        column_names=["transition_id", "feed_id", "owner_department", "status", "changed_at"],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    url = f"chdb://{tmp_path_factory.mktemp('preaggregated') / 'analytics'}"
    # Not on an hour: every period below has hours at its ends.
    now = datetime.now(UTC).replace(microsecond=0)
    if now.minute in (0, 59):
        now -= timedelta(minutes=7)
    apply_migrations(url)
    _insert_access(url, _access_rows(now))
    _insert_catalog(url, now)
    yield Store(url, now)
    disconnect(url)


def _service(store: Store, department: str | None) -> AnalyticsService:
    return AnalyticsService(AnalyticsStore(store.url), Scope(department=department))


def _periods(now: datetime) -> dict[str, Period]:
    return {
        "7 days, hours at both ends": Period(now - timedelta(days=7, minutes=41), now),
        "3 days ending in the past": Period(
            now - timedelta(days=5, hours=3), now - timedelta(days=2, hours=5)
        ),
        "whole days": Period(
            floor_time(now, Granularity.day) - timedelta(days=4), floor_time(now, Granularity.day)
        ),
        "under a day": Period(now - timedelta(hours=20), now),
        "every event and more": Period(now - timedelta(days=40), now + timedelta(hours=1)),
    }


def _raw_where(
    store: Store, period: Period, department: str | None, filters: UsageFilters
) -> tuple[str, dict[str, Any]]:
    """The same events as the rollups' buckets starting in the period, straight from the table."""
    start = floor_time(period.start, Granularity.hour)
    conditions = [
        "toStartOfHour(time) >= {start:DateTime('UTC')}",
        "toStartOfHour(time) < {end:DateTime('UTC')}",
    ]
    parameters: dict[str, Any] = {
        "start": to_clickhouse_time(start),
        "end": to_clickhouse_time(period.end),
    }
    for column in ("owner_department", "requester_department", "kind", "region", "feed_id"):
        values = getattr(filters, column)
        if values:
            conditions.append(f"{column} IN {{{column}:Array(String)}}")
            parameters[column] = values
    if department is not None:
        conditions.append(
            "(owner_department = {department:String} OR requester_department = {department:String})"
        )
        parameters["department"] = department
    return " AND ".join(conditions), parameters


def raw_top_feeds(
    store: Store,
    period: Period,
    metric: TopMetric,
    filters: UsageFilters,
    limit: int,
    department: str | None,
) -> list[dict[str, Any]]:
    where, parameters = _raw_where(store, period, department, filters)
    order = {"retrievals": "retrievals", "bytes": "bytes", "seconds": "seconds"}[metric.value]
    result = connect(store.url).query(
        f"""
        SELECT feed_id, any(owner_department) AS feed_owner, any(kind) AS feed_kind,
               any(region) AS feed_region,
               countIf(type = 'retrieval.started') AS total_retrievals,
               sumIf(bytes, type = 'retrieval.ended') AS total_bytes,
               sumIf(duration_seconds, type = 'retrieval.ended') AS total_seconds,
               uniqExactIf(sipHash64(requester_department, requester_user),
                           type = 'retrieval.started') AS total_requesters,
               uniqExactIf(requester_department, type = 'retrieval.started')
                   AS total_requester_departments
        FROM access_events FINAL
        WHERE type IN ('retrieval.started', 'retrieval.ended', 'retrieval.denied') AND {where}
        GROUP BY feed_id
        HAVING total_retrievals > 0 OR total_bytes > 0
        ORDER BY total_{order} DESC, feed_id
        LIMIT {limit}
        """,
        parameters=parameters,
    )
    names = ["feed_id", "owner_department", "kind", "region", "retrievals", "bytes", "seconds"]
    names += ["requesters", "requester_departments"]
    return [
        {**dict(zip(names, row, strict=True)), "seconds": round(row[6], 3)}
        for row in result.result_rows
    ]


def raw_dormant_feeds(
    store: Store, period: Period, owners: list[str], department: str | None
) -> list[dict[str, Any]]:
    client = connect(store.url)
    scope = "1"
    parameters: dict[str, Any] = {"owners": owners, "department": department or ""}
    if owners:
        scope += " AND owner_department IN {owners:Array(String)}"
    if department is not None:
        scope += " AND owner_department = {department:String}"
    catalog = client.query(
        "SELECT feed_id, owner_department, status FROM feed_metadata FINAL "
        f"WHERE NOT retired AND {scope}",
        parameters=parameters,
    ).result_rows
    liveness: dict[str, str] = {
        feed_id: status
        for feed_id, status in client.query(
            "SELECT feed_id, argMax(status, changed_at) FROM feed_status GROUP BY feed_id"
        ).result_rows
    }
    where, window = _raw_where(store, period, None, UsageFilters())
    retrievals: dict[str, int] = {
        feed_id: int(count)
        for feed_id, count in client.query(
            "SELECT feed_id, count() FROM access_events FINAL "
            f"WHERE type = 'retrieval.started' AND {where} AND {scope} GROUP BY feed_id",
            parameters={**parameters, **window},
        ).result_rows
    }
    answer = []
    for feed_id, _owner, status in sorted(catalog, key=lambda row: (row[1], row[0])):
        live = liveness.get(feed_id, "")
        reasons = [
            name
            for name, holds in (
                ("never_retrieved", not retrievals.get(feed_id)),
                ("offline", (live or status) == "offline"),
                ("never_online", not live and status not in ("online", "offline")),
            )
            if holds
        ]
        if reasons:
            answer.append(
                {"feed_id": feed_id, "retrievals": retrievals.get(feed_id, 0), "reasons": reasons}
            )
    return answer


SCOPES = [None, "lz-jtj"]
# The first place, a short list, and every feed (where the narrowing must keep them all).
RANKINGS = [(TopMetric.retrievals, 7), (TopMetric.bytes, 1), (TopMetric.seconds, 200)]
FILTERS = {
    "no filter": UsageFilters(),
    "cameras of two regions": UsageFilters(kind=["camera"], region=["620102", "620104"]),
    "one owner": UsageFilters(owner_department=["lz-cgj"]),
    "one requester": UsageFilters(requester_department=["lz-sjj"]),
}


def _tables_read(service: AnalyticsService) -> list[str]:
    """Records the rollups each of the service's queries reads, in order."""
    read: list[str] = []
    rows = service.store.rows

    async def recording(name: str, sql: str, parameters: Any) -> list[dict[str, Any]]:
        read.append(" ".join(sorted(set(re.findall(r"\bFROM (\w+)", sql)))))
        return await rows(name, sql, parameters)

    service.store.rows = recording  # type: ignore[method-assign]
    return read


# Contenders read by feed whenever narrowed (1), or never (the bucket-ordered rollups).
READS = {"by feed": 1, "by bucket": 10**9}


@pytest.mark.parametrize("reads", list(READS))
@pytest.mark.parametrize(
    "department",
    [*SCOPES, "lz-sjj"],
    ids=["operator", "department", "department owning no feed"],
)
async def test_top_feeds_equal_the_ranking_of_the_raw_events(
    store: Store, department: str | None, reads: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "BY_FEED_SHARE", READS[reads])
    service = _service(store, department)
    read = _tables_read(service)
    compared = 0
    for period_name, period in _periods(store.now).items():
        for filter_name, filters in FILTERS.items():
            for metric, limit in RANKINGS:
                got = [
                    row.model_dump()
                    for row in await service.top_feeds(period, metric, filters, limit)
                ]
                expected = raw_top_feeds(store, period, metric, filters, limit, department)
                assert got == expected, (period_name, filter_name, metric, limit)
                compared += len(expected)
    assert compared > 500
    # Each way was taken: by feed for narrowed rankings, and a department's bounds come from
    # its own rows unless a requester filter needs them split.
    by_feed = [tables for tables in read if "usage_feeds_hour_by_feed" in tables]
    assert (len(by_feed) > 10) if reads == "by feed" else not by_feed
    bounds = {tables for tables in read if "usage_feeds_hour" not in tables}
    if department is None:
        assert bounds == {"feed_activity_day", "usage_feeds_day"}
    else:
        assert bounds == {"usage_scopes_day", "usage_feeds_day"}


def raw_usage(
    store: Store,
    period: Period,
    granularity: Granularity,
    group_by: str,
    filters: UsageFilters,
    department: str | None,
) -> list[dict[str, Any]]:
    # Buckets starting in the period count, the one holding its start included.
    counted = Period(floor_time(period.start, granularity), period.end)
    where, parameters = _raw_where(store, counted, department, filters)
    bucket = (
        "toStartOfDay(time, 'UTC')" if granularity is Granularity.day else "toStartOfHour(time)"
    )
    result = connect(store.url).query(
        f"""
        SELECT {bucket} AS period_bucket, {group_by} AS grouped,
               countIf(type = 'retrieval.started'), countIf(type = 'retrieval.denied'),
               sumIf(bytes, type = 'retrieval.ended'),
               sumIf(duration_seconds, type = 'retrieval.ended'),
               uniqExactIf(sipHash64(requester_department, requester_user),
                           type = 'retrieval.started')
        FROM access_events FINAL
        WHERE type IN ('retrieval.started', 'retrieval.ended', 'retrieval.denied') AND {where}
        GROUP BY period_bucket, grouped
        ORDER BY period_bucket, grouped
        """,
        parameters=parameters,
    )
    names = ["bucket", "group", "retrievals", "denied", "bytes", "seconds", "requesters"]
    return [
        {**dict(zip(names, row, strict=True)), "bucket": row[0].replace(tzinfo=UTC)}
        for row in result.result_rows
    ]


@pytest.mark.parametrize("department", SCOPES, ids=["operator", "department"])
async def test_usage_of_named_feeds_reads_them_by_feed_and_equals_the_raw_events(
    store: Store, department: str | None
) -> None:
    service = _service(store, department)
    read = _tables_read(service)
    feeds = UsageFilters(feed_id=[_feed(0), _feed(5), _feed(13), _feed(42)])
    compared = 0
    for period_name, period in _periods(store.now).items():
        for granularity in (Granularity.hour, Granularity.day):
            for group_by in (GroupBy.feed, GroupBy.requester_department):
                rows, truncated = await service.usage(period, granularity, group_by, feeds, 10_000)
                got = [row.model_dump() for row in rows]
                column = "feed_id" if group_by is GroupBy.feed else group_by.value
                expected = raw_usage(store, period, granularity, column, feeds, department)
                assert got == expected and not truncated, (period_name, granularity, group_by)
                compared += len(expected)
    assert compared > 300
    assert read and all(tables == "usage_feeds_hour_by_feed" for tables in read)


def test_ranking_rollups_equal_the_raw_events(store: Store) -> None:
    assert_ranking_rollups_equal_the_raw_events(store.url)


def assert_ranking_rollups_equal_the_raw_events(url: str) -> None:
    """A department's rows hold the events of its feeds and its own retrievals of others',
    once each; the rows by feed hold every hour's figures and distinct requesters."""
    client = connect(url)
    sums = (
        "countIf(type = 'retrieval.started'), countIf(type = 'retrieval.denied'), "
        "sumIf(bytes, type = 'retrieval.ended'), sumIf(duration_seconds, type = 'retrieval.ended')"
    )
    for department in REQUESTERS:
        rows = client.query(
            "SELECT bucket, feed_id, owner_department, sum(retrievals), sum(denied), sum(bytes), "
            "sum(seconds) FROM usage_scopes_day WHERE scope_department = {department:String} "
            "GROUP BY bucket, feed_id, owner_department ORDER BY bucket, feed_id",
            parameters={"department": department},
        ).result_rows
        raw = client.query(
            f"SELECT toStartOfDay(time, 'UTC') AS day, feed_id, owner_department, {sums} "
            "FROM access_events FINAL WHERE owner_department = {department:String} "
            "OR requester_department = {department:String} "
            "GROUP BY day, feed_id, owner_department ORDER BY day, feed_id",
            parameters={"department": department},
        ).result_rows
        assert rows == raw and raw, department
    by_feed = client.query(
        "SELECT bucket, feed_id, requester_department, sum(retrievals), sum(denied), sum(bytes), "
        "sum(seconds), uniqMerge(requesters) FROM usage_feeds_hour_by_feed "
        "GROUP BY bucket, feed_id, requester_department "
        "ORDER BY bucket, feed_id, requester_department"
    ).result_rows
    raw = client.query(
        f"SELECT toStartOfHour(time) AS hour, feed_id, requester_department, {sums}, "
        "uniqExactIf(sipHash64(requester_department, requester_user), "
        "type = 'retrieval.started') FROM access_events FINAL "
        "GROUP BY hour, feed_id, requester_department "
        "ORDER BY hour, feed_id, requester_department"
    ).result_rows
    assert by_feed == raw and len(raw) > 1_000


@pytest.mark.parametrize("department", SCOPES, ids=["operator", "department"])
async def test_top_feeds_narrowing_leaves_out_feeds_and_keeps_every_winner(
    store: Store, department: str | None
) -> None:
    """Not vacuous: over periods with whole days the bounds do leave most feeds out."""
    from registry_api.analytics.service import Where

    service = _service(store, department)
    period = _periods(store.now)["7 days, hours at both ends"]
    daily = "feed_activity_day" if department is None else "usage_feeds_day"
    where = Where().scope(Scope(department=department))
    narrowed = await service._contenders(period, TopMetric.retrievals, daily, where, 7)
    assert narrowed is not None and 7 <= len(narrowed.feeds) < FEEDS // 2
    winners = raw_top_feeds(store, period, TopMetric.retrievals, UsageFilters(), 7, department)
    assert {row["feed_id"] for row in winners} <= set(narrowed.feeds)
    short = _periods(store.now)["under a day"]
    assert await service._contenders(short, TopMetric.retrievals, daily, where, 7) is None


@pytest.mark.parametrize("department", SCOPES, ids=["operator", "department"])
async def test_dormant_feeds_equal_the_raw_events_and_the_catalog(
    store: Store, department: str | None
) -> None:
    service = _service(store, department)
    for period_name, period in _periods(store.now).items():
        for owners in ([], ["lz-jtj", "lz-hbj"]):
            expected = raw_dormant_feeds(store, period, owners, department)
            rows, total = await service.dormant_feeds(period, owners, 10_000, 0)
            got = [
                {"feed_id": row.feed_id, "retrievals": row.retrievals, "reasons": row.reasons}
                for row in rows
            ]
            assert got == expected, (period_name, owners)
            assert total == len(expected)
            page, paged_total = await service.dormant_feeds(period, owners, 3, 2)
            assert [row.feed_id for row in page] == [row["feed_id"] for row in expected[2:5]]
            assert paged_total == total
    # The periods reach both answers: feeds never retrieved, and feeds listed (offline)
    # although retrieved, whose retrievals are summed.
    everything = raw_dormant_feeds(
        store, _periods(store.now)["7 days, hours at both ends"], [], None
    )
    assert any(row["reasons"] == ["never_retrieved"] for row in everything)
    assert any(row["retrievals"] > 0 for row in everything)


def test_feed_retrieval_spans_equal_the_raw_events(store: Store) -> None:
    client = connect(store.url)
    spans = client.query(
        "SELECT feed_id, owner_department, min(first_hour), max(last_hour) "
        "FROM feed_retrieval_span GROUP BY feed_id, owner_department ORDER BY feed_id"
    ).result_rows
    raw = client.query(
        "SELECT feed_id, owner_department, toUInt32(intDiv(toUnixTimestamp(min(time)), 3600)), "
        "toUInt32(intDiv(toUnixTimestamp(max(time)), 3600)) FROM access_events FINAL "
        "WHERE type = 'retrieval.started' GROUP BY feed_id, owner_department ORDER BY feed_id"
    ).result_rows
    assert spans == raw and len(raw) > FEEDS // 2
    first, end = hour_numbers(_periods(store.now)["under a day"])
    assert end - first in (20, 21)


def test_an_existing_store_gets_the_spans_backfilled_when_it_migrates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store holding events from before the span table (migration 14) existed."""
    url = f"chdb://{tmp_path / 'analytics'}"
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        apply_migrations(url)
        client = connect(url)
        client.command("DROP VIEW feed_retrieval_span_mv")
        client.command("DROP TABLE feed_retrieval_span")
        client.command(
            "ALTER TABLE schema_migrations DELETE WHERE version = 14",
            settings={"mutations_sync": 2},
        )
        _insert_access(url, _access_rows(now - timedelta(days=40), seed=3))
        with caplog.at_level(logging.INFO, logger="feedgrid.clickhouse.migrations"):
            assert apply_migrations(url) == [14]
        months = [
            record.getMessage() for record in caplog.records if "backfilled" in record.getMessage()
        ]
        assert months and "months" in months[-1]
        spans = client.query(
            "SELECT feed_id, min(first_hour), max(last_hour) FROM feed_retrieval_span "
            "GROUP BY feed_id ORDER BY feed_id"
        ).result_rows
        raw = client.query(
            "SELECT feed_id, toUInt32(intDiv(toUnixTimestamp(min(time)), 3600)), "
            "toUInt32(intDiv(toUnixTimestamp(max(time)), 3600)) FROM access_events "
            "WHERE type = 'retrieval.started' GROUP BY feed_id ORDER BY feed_id"
        ).result_rows
        assert spans == raw and raw
        # New events after the upgrade reach the table through the view.
        _insert_access(url, _access_rows(now, seed=4)[:50])
        latest = client.query("SELECT max(last_hour) FROM feed_retrieval_span").result_rows[0][0]
        assert latest >= int((now - timedelta(days=DAYS)).timestamp()) // 3600
    finally:
        disconnect(url)


def test_an_existing_store_gets_the_ranking_rollups_backfilled_when_it_migrates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store holding events from before the ranking rollups (migration 15) existed; the
    backfill run a second time (as after an interruption, with events come through the views
    since) rebuilds its months instead of adding them twice."""
    url = f"chdb://{tmp_path / 'analytics'}"
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        apply_migrations(url)
        client = connect(url)
        ranking = load_migrations()[15]
        for item in reversed(ranking.objects):  # the views first
            kind = "VIEW" if item.placement is Placement.view else "TABLE"
            client.command(f"DROP {kind} {item.name}")
        client.command(
            "ALTER TABLE schema_migrations DELETE WHERE version = 15",
            settings={"mutations_sync": 2},
        )
        _insert_access(url, _access_rows(now - timedelta(days=20), seed=5))
        with caplog.at_level(logging.INFO, logger="feedgrid.clickhouse.migrations"):
            assert apply_migrations(url) == [15]
        backfilled = {
            record.getMessage().split()[2]  # "backfill of <table> (view <view>) done"
            for record in caplog.records
            if record.getMessage().startswith("backfill of")
        }
        assert backfilled == {"usage_scopes_day", "usage_feeds_hour_by_feed"}
        assert_ranking_rollups_equal_the_raw_events(url)
        # New events after the upgrade reach both tables through their views.
        _insert_access(url, _access_rows(now, seed=6)[:500])
        assert_ranking_rollups_equal_the_raw_events(url)
        for item in ranking.objects:
            backfill = backfill_statements(item)
            if backfill is not None:
                _backfill(client, item.name, backfill)
        assert_ranking_rollups_equal_the_raw_events(url)
    finally:
        disconnect(url)


def _escalation_rows(now: datetime, seed: int) -> list[list[Any]]:
    """access.escalated events (request, feed, departments, requested_at): some twice (a
    replay), some without a request time, among other access events of the same requests."""
    rng = random.Random(seed)
    rows = []
    for number in range(400):
        index = rng.randrange(FEEDS)
        requested = now - timedelta(days=rng.uniform(0, 40))
        requester = rng.choice(REQUESTERS)
        common = [
            f"request-{seed}-{number // 3}", _feed(index), _facts(index)["owner_department"],
            requester,
        ]  # fmt: skip
        escalated = to_clickhouse_time(requested + timedelta(days=6))
        kinds = ["access.requested", "access.escalated"] + ["access.escalated"] * (number % 7 == 0)
        for kind in kinds:
            at = None if number % 23 == 0 else to_clickhouse_time(requested)
            rows.append([uuid.uuid4(), escalated, kind, *common, at])
    return rows


def _insert_escalations(url: str, rows: list[list[Any]]) -> None:
    """The events, and each request's row in ``decisions`` (still pending), which is what the
    decisions report lists its departments from."""
    names = [
        "event_id", "time", "type", "request_id", "feed_id", "owner_department",
        "requester_department", "requested_at",
    ]  # fmt: skip
    connect(url).insert("access_events", rows, column_names=names)
    requests = {tuple(row[3:8]) for row in rows if row[7] is not None}
    connect(url).insert(
        "decisions",
        [[*request, uuid.uuid4(), request[4], "pending"] for request in requests],
        column_names=[
            "request_id", "feed_id", "owner_department", "requester_department",
            "requested_at", "event_id", "time", "decision",
        ],
    )  # fmt: skip


async def _escalated_by_service(url: str, period: Period, department: str | None) -> list[Any]:
    service = AnalyticsService(AnalyticsStore(url), Scope(department=department))
    _, _, rows = await service.decisions(period, UsageFilters(), {})
    return sorted((row.owner_department, row.escalated) for row in rows if row.escalated)


def _escalated_raw(url: str, period: Period, department: str | None) -> list[Any]:
    """What the decisions report counted before the escalations table: the raw events."""
    scope = (
        ""
        if department is None
        else " AND (owner_department = {department:String} "
        "OR requester_department = {department:String})"
    )
    rows = (
        connect(url)
        .query(
            "SELECT owner_department, uniqExact(request_id, feed_id) FROM access_events "
            "WHERE type = 'access.escalated' AND requested_at >= {start:DateTime64(3, 'UTC')} "
            "AND requested_at < {end:DateTime64(3, 'UTC')}" + scope + " GROUP BY owner_department",
            parameters={
                "start": to_clickhouse_time(period.start),
                "end": to_clickhouse_time(period.end),
                "department": department or "",
            },
        )
        .result_rows
    )
    return sorted((owner, int(count)) for owner, count in rows)


async def test_escalations_equal_the_raw_events_after_a_backfill_and_through_the_view(
    tmp_path: Path,
) -> None:
    """A store holding escalations from before their table (migration 16) existed gets them
    backfilled; later ones come through the view; the decisions report counts what the raw
    events hold, for the operator and for a department, over periods in the past and now."""
    url = f"chdb://{tmp_path / 'analytics'}"
    now = datetime.now(UTC).replace(microsecond=0)
    periods = [
        Period(now - timedelta(days=45), now + timedelta(hours=1)),
        Period(now - timedelta(days=30), now - timedelta(days=9)),
        Period(now - timedelta(days=3), now),
    ]
    try:
        apply_migrations(url)
        client = connect(url)
        for item in reversed(load_migrations()[16].objects):  # the view first
            kind = "VIEW" if item.placement is Placement.view else "TABLE"
            client.command(f"DROP {kind} {item.name}")
        client.command(
            "ALTER TABLE schema_migrations DELETE WHERE version = 16",
            settings={"mutations_sync": 2},
        )
        _insert_escalations(url, _escalation_rows(now, seed=1))
        assert apply_migrations(url) == [16]
        _insert_escalations(url, _escalation_rows(now, seed=2))
        counted = 0
        for period in periods:
            for department in (None, OWNERS[1], REQUESTERS[-1]):
                raw = _escalated_raw(url, period, department)
                assert await _escalated_by_service(url, period, department) == raw
                counted += sum(count for _, count in raw)
        assert counted > 300  # the periods hold escalations of both seeds
    finally:
        disconnect(url)
