"""The analytics queries: materialized-view rollups first, raw tables where they must.

Every value reaches ClickHouse as a bound ``{name:Type}`` parameter. The only SQL put
together here are fixed fragments chosen from closed vocabularies (the rollup table, the
bucket expression, the grouped column), never text from a request.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from registry_api.analytics.schemas import (
    AlertRow,
    DecisionDepartmentRow,
    DecisionTotals,
    DenyReason,
    DormantFeedRow,
    Granularity,
    GroupBy,
    Period,
    Scope,
    ScorecardRow,
    SharingCell,
    TopFeedRow,
    TopMetric,
    UsageFilters,
    UsageRow,
)
from registry_api.analytics.store import AnalyticsStore
from registry_api.errors import Unprocessable

MINUTE_RETENTION = timedelta(days=35)
MAX_BUCKETS = 200_000
# A ranking narrowed to more feeds than this reads the rollups whole instead.
MOST_CONTENDERS = 20_000
# The contenders' rows are read from the rollup ordered by feed while they are at most one
# in this many of the feeds ranked: each feed then reads granules of its own (hours and
# requester departments), cheaper than merging every feed's per-day distinct-count states.
BY_FEED_SHARE = 100
DEFAULT_DEADLINE_DAYS = 5

_GROUP_COLUMNS = {
    GroupBy.owner_department: "owner_department",
    GroupBy.requester_department: "requester_department",
    GroupBy.feed: "feed_id",
    GroupBy.kind: "kind",
    GroupBy.region: "region",
}
_BUCKET_SIZE = {
    Granularity.minute: timedelta(minutes=1),
    Granularity.hour: timedelta(hours=1),
    Granularity.day: timedelta(days=1),
}
_TOP_ORDER = {
    TopMetric.retrievals: "total_retrievals",
    TopMetric.bytes: "total_bytes",
    TopMetric.seconds: "total_seconds",
    TopMetric.requesters: "total_requesters",
}
# Aliases differ from the rollup columns: an alias equal to a column would shadow it.
_TOTALS = (
    "sum(retrievals) AS total_retrievals, sum(denied) AS total_denied, sum(bytes) AS total_bytes, "
    "sum(seconds) AS total_seconds, uniqMerge(requesters) AS total_requesters"
)


def _totals(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "retrievals": int(row["total_retrievals"]),
        "denied": int(row["total_denied"]),
        "bytes": int(row["total_bytes"]),
        "seconds": round(float(row["total_seconds"]), 3),
        "requesters": int(row["total_requesters"]),
    }


# The owner's deadline: N working days (Monday to Friday) after the request, counted in the
# city's time zone as the registry counts them (registry_api.access.policy.add_working_days).
# N comes from the departments' answer_deadline_days, bound as two parallel arrays.
_DEADLINE = """
    transform(owner_department,
              {deadline_departments:Array(String)}, {deadline_days:Array(UInt16)},
              toUInt16({default_deadline_days:UInt16})) AS working_days,
    toTimeZone(requested_at, {city_timezone:String}) AS local_requested_at,
    toDayOfWeek(local_requested_at) AS weekday,
    addDays(local_requested_at, if(weekday <= 5,
        working_days + 2 * intDiv(weekday - 1 + working_days, 5),
        working_days + 2 * intDiv(4 + working_days, 5) - (weekday - 5))) AS deadline,
    decision IN ('granted', 'denied') AS answered,
    dateDiff('millisecond', requested_at, decided_at) / 1000 AS seconds_to_decision
"""

# Each feed's latest transition seen by the heartbeat agent (argMax makes FINAL unneeded:
# a duplicate transition carries the same status and time).
_LATEST_LIVENESS = """
    SELECT feed_id, argMax(status, changed_at) AS liveness, max(changed_at) AS last_change
    FROM feed_status
    GROUP BY feed_id
"""


def floor_time(moment: datetime, granularity: Granularity) -> datetime:
    moment = moment.astimezone(UTC)
    if granularity is Granularity.minute:
        return moment.replace(second=0, microsecond=0)
    if granularity is Granularity.hour:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def day_spans(start: datetime, end: datetime) -> list[tuple[bool, datetime, datetime]]:
    """[start, end) cut into (daily?, from, to): whole UTC days in the middle, hours at the ends.

    Long periods then read one row per day instead of 24; the ends keep hour precision.
    """
    first_day = floor_time(start, Granularity.day)
    if first_day < start:
        first_day += timedelta(days=1)
    last_day = floor_time(end, Granularity.day)
    if first_day >= last_day:
        return [(False, start, end)]
    spans = [(False, start, first_day)] if start < first_day else []
    spans.append((True, first_day, last_day))
    if last_day < end:
        spans.append((False, last_day, end))
    return spans


def hour_numbers(period: Period) -> tuple[int, int]:
    """The period as hours since 1970-01-01 UTC, [first, end): the hour buckets it counts
    (the one holding its start too), as feed_retrieval_hours numbers them."""
    first = int(floor_time(period.start, Granularity.hour).timestamp()) // 3600
    # Whole seconds, as the rollup queries' DateTime bound reads the end.
    return first, -(-int(period.end.timestamp()) // 3600)


def covering_days(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[first, last) of the UTC days that [start, end) touches, whole or in part."""
    last = floor_time(end, Granularity.day)
    return floor_time(start, Granularity.day), last if last == end else last + timedelta(days=1)


_DEPARTMENT_COLUMNS = (
    "bucket, owner_department, requester_department, kind, region, "
    "retrievals, denied, bytes, seconds, requesters"
)
_FEED_SUMS = "bucket, feed_id, owner_department, kind, region, retrievals, denied, bytes, seconds"
_FEED_COLUMNS = (
    "bucket, feed_id, owner_department, kind, region, retrievals, denied, bytes, seconds, "
    "requesters, requester_departments"
)
# usage_feeds_hour and usage_feeds_day share these columns.
_FEED_REQUESTER_SUMS = (
    "bucket, feed_id, owner_department, requester_department, kind, region, "
    "retrievals, denied, bytes, seconds"
)
_FEED_REQUESTER_COLUMNS = _FEED_REQUESTER_SUMS + ", requesters"
# The same from usage_feeds_hour rows, whose requester department becomes a one-row state.
_FEED_COLUMNS_FROM_HOURS = (
    "bucket, feed_id, owner_department, kind, region, retrievals, denied, bytes, seconds, "
    "requesters, arrayReduce('uniqState', if(retrievals > 0, "
    "[CAST(requester_department, 'String')], CAST([], 'Array(String)'))) AS requester_departments"
)


# Requesting departments from rows split by requester department (a department's view, or
# the rollup ordered by feed), counting those with a retrieval.
_DEPARTMENTS_FROM_REQUESTER_ROWS = "uniqExactIf(requester_department, retrievals > 0)"


@dataclass(frozen=True)
class Contenders:
    """The feeds a ranking is narrowed to, and how many feeds it was narrowed from."""

    feeds: list[str]
    ranked: int


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else round(number, 3)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class Where:
    """AND-ed conditions from fixed fragments, and the values they bind."""

    conditions: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def add(self, condition: str, **parameters: Any) -> Where:
        self.conditions.append(condition)
        self.parameters.update(parameters)
        return self

    def bind(self, **parameters: Any) -> Where:
        self.parameters.update(parameters)
        return self

    def sql(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "1"

    def stitched(
        self,
        start: datetime,
        end: datetime,
        hourly: str,
        daily: str,
        columns: str,
        hourly_columns: str | None = None,
    ) -> str:
        """A subquery over ``hourly`` and ``daily`` rollups covering [start, end) once.

        These conditions (filters, scope) apply to every part; each part binds its span.
        ``hourly_columns`` computes, from hourly rows, columns only the daily rollup stores.
        """
        parts = []
        for index, (whole_days, span_start, span_end) in enumerate(day_spans(start, end)):
            self.bind(**{f"span_start_{index}": span_start, f"span_end_{index}": span_end})
            selected = columns if whole_days else (hourly_columns or columns)
            parts.append(
                f"SELECT {selected} FROM {daily if whole_days else hourly} "
                f"WHERE bucket >= {{span_start_{index}:DateTime('UTC')}} "
                f"AND bucket < {{span_end_{index}:DateTime('UTC')}} AND {self.sql()}"
            )
        return "(" + " UNION ALL ".join(parts) + ")"

    def filters(self, filters: UsageFilters, columns: Sequence[str]) -> Where:
        for column in columns:
            values = getattr(filters, column)
            if values:
                self.add(
                    f"{column} IN {{filter_{column}:Array(String)}}", **{f"filter_{column}": values}
                )
        return self

    def scope(self, scope: Scope, *, owner_only: bool = False) -> Where:
        if scope.is_city:
            return self
        if owner_only:
            return self.add(
                "owner_department = {scope_department:String}", scope_department=scope.department
            )
        return self.add(
            "(owner_department = {scope_department:String} "
            "OR requester_department = {scope_department:String})",
            scope_department=scope.department,
        )


class AnalyticsService:
    def __init__(self, store: AnalyticsStore, scope: Scope, city_timezone: str = "UTC") -> None:
        self.store = store
        self.scope = scope
        self.city_timezone = city_timezone

    # ------------------------------------------------------------------ usage

    async def usage(
        self,
        period: Period,
        granularity: Granularity,
        group_by: GroupBy,
        filters: UsageFilters,
        limit: int,
    ) -> tuple[list[UsageRow], bool]:
        start = floor_time(period.start, granularity)
        if granularity is Granularity.minute and start < datetime.now(UTC) - MINUTE_RETENTION:
            raise Unprocessable(
                "minute granularity is kept for 35 days; ask for hour or day",
                code="granularity_out_of_range",
            )
        if (period.end - start) / _BUCKET_SIZE[granularity] > MAX_BUCKETS:
            raise Unprocessable(
                f"the period holds more than {MAX_BUCKETS} buckets; use a coarser granularity",
                code="period_too_long",
            )
        family = "feeds" if group_by is GroupBy.feed or filters.feed_id else "departments"
        grain = "minute" if granularity is Granularity.minute else "hour"
        bucket = "toStartOfDay(bucket)" if granularity is Granularity.day else "bucket"
        columns = ["owner_department", "requester_department", "kind", "region"]
        if family == "feeds":
            columns.append("feed_id")
        where = Where().filters(filters, columns).scope(self.scope)
        if granularity is Granularity.day and family == "departments":
            source = where.stitched(
                start,
                period.end,
                "usage_departments_hour",
                "usage_departments_day",
                _DEPARTMENT_COLUMNS,
            )
            where = Where(parameters=where.parameters)
        else:
            source = f"usage_{family}_{grain}"
            if source == "usage_feeds_hour" and filters.feed_id:
                # Named feeds: their rows lie together in the rollup ordered by feed, where
                # the bucket-ordered one spreads each over every hour's granules.
                source = "usage_feeds_hour_by_feed"
            where.add("bucket >= {start:DateTime('UTC')}", start=start)
            where.add("bucket < {end:DateTime('UTC')}", end=period.end)
        where.parameters["row_limit"] = limit + 1
        rows = await self.store.rows(
            "usage",
            f"""
            SELECT {bucket} AS period_bucket, {_GROUP_COLUMNS[group_by]} AS grouped,
                   {_TOTALS}
            FROM {source}
            WHERE {where.sql()}
            GROUP BY period_bucket, grouped
            ORDER BY period_bucket, grouped
            LIMIT {{row_limit:UInt32}}
            """,
            where.parameters,
        )
        answer = [
            UsageRow(bucket=row["period_bucket"], group=row["grouped"], **_totals(row))
            for row in rows[:limit]
        ]
        return answer, len(rows) > limit

    async def sharing_matrix(self, period: Period, filters: UsageFilters) -> list[SharingCell]:
        """Owner x requester cells. A play refused for want of a token names no requester
        (nobody can say whose player it was): it is no department's use of another's feeds,
        so it has no column here; the owner's denied retrievals in ``usage`` still count it."""
        where = Where().filters(
            filters, ["owner_department", "requester_department", "kind", "region"]
        )
        where.add("requester_department != ''")
        where.scope(self.scope)
        source = self._departments(period, where)
        rows = await self.store.rows(
            "sharing_matrix",
            f"""
            SELECT owner_department, requester_department, {_TOTALS}
            FROM {source}
            GROUP BY owner_department, requester_department
            ORDER BY owner_department, requester_department
            """,
            where.parameters,
        )
        return [
            SharingCell(
                owner_department=row["owner_department"],
                requester_department=row["requester_department"],
                **_totals(row),
            )
            for row in rows
        ]

    async def top_feeds(
        self, period: Period, metric: TopMetric, filters: UsageFilters, limit: int
    ) -> list[TopFeedRow]:
        """The feeds ranked first in the period, with their figures.

        Summed metrics are ranked in two steps. The per-day rows first narrow the ranking to
        the feeds that can still reach it (:meth:`_contenders`): city-wide from the per-day
        feed rollup, for a department from its own rows (``usage_scopes_day``), with a
        requester filter from the per-day rollup by feed and requester department. The
        contenders' figures, distinct counts included, are then merged over the period's
        hours from the rollup ordered by feed (``usage_feeds_hour_by_feed``), which holds each
        feed's rows together: a few dozen feeds read only their own granules. When too many
        feeds are left for that, or the period holds no whole day, or the ranking is by
        distinct requesters, the bucket-ordered rollups are merged as a whole: whole days from
        the per-day rollups, the hours at either end from the hourly one.
        """
        city_wide = self.scope.is_city and not filters.requester_department
        if city_wide:
            columns = ["owner_department", "kind", "region", "feed_id"]
            departments = "uniqMerge(requester_departments)"
        else:
            columns = ["owner_department", "requester_department", "kind", "region", "feed_id"]
            departments = _DEPARTMENTS_FROM_REQUESTER_ROWS
        where = Where().filters(filters, columns).scope(self.scope)
        first_hour = floor_time(period.start, Granularity.hour)
        if metric is not TopMetric.requesters:
            daily, bounds_where = self._ranking_rollup(filters)
            narrowed = await self._contenders(period, metric, daily, bounds_where, limit)
            if narrowed is not None:
                if not narrowed.feeds:
                    return []
                where.add("feed_id IN {ranked_feeds:Array(String)}", ranked_feeds=narrowed.feeds)
                if len(narrowed.feeds) * BY_FEED_SHARE <= narrowed.ranked:
                    where.add("bucket >= {first_hour:DateTime('UTC')}", first_hour=first_hour)
                    where.add("bucket < {end:DateTime('UTC')}", end=period.end)
                    return await self._ranked(
                        f"(SELECT {_FEED_REQUESTER_COLUMNS} FROM usage_feeds_hour_by_feed "
                        f"WHERE {where.sql()})",
                        _DEPARTMENTS_FROM_REQUESTER_ROWS,
                        metric,
                        limit,
                        where.parameters,
                    )
        if city_wide:
            source = self._feed_activity(period, where)
        else:
            source = where.stitched(
                first_hour,
                period.end,
                "usage_feeds_hour",
                "usage_feeds_day",
                _FEED_REQUESTER_COLUMNS,
            )
        return await self._ranked(source, departments, metric, limit, where.parameters)

    async def _ranked(
        self,
        source: str,
        departments: str,
        metric: TopMetric,
        limit: int,
        parameters: dict[str, Any],
    ) -> list[TopFeedRow]:
        """The first ``limit`` feeds of ``source`` (rows of a feed rollup) by ``metric``."""
        rows = await self.store.rows(
            "top_feeds",
            f"""
            SELECT feed_id, any(owner_department) AS feed_owner, any(kind) AS feed_kind,
                   any(region) AS feed_region, {_TOTALS},
                   {departments} AS total_requester_departments
            FROM {source}
            GROUP BY feed_id
            HAVING total_retrievals > 0 OR total_bytes > 0
            ORDER BY {_TOP_ORDER[metric]} DESC, feed_id
            LIMIT {{row_limit:UInt32}}
            """,
            {**parameters, "row_limit": limit},
        )
        return [
            TopFeedRow(
                feed_id=row["feed_id"],
                owner_department=row["feed_owner"],
                kind=row["feed_kind"],
                region=row["feed_region"],
                requester_departments=row["total_requester_departments"],
                **{key: value for key, value in _totals(row).items() if key != "denied"},
            )
            for row in rows
        ]

    def _ranking_rollup(self, filters: UsageFilters) -> tuple[str, Where]:
        """The per-day rollup whose rows bound a ranking for this caller, and its conditions.

        A department's rows are a table of their own (``usage_scopes_day``: one row per feed
        and day); only a requester filter needs the rows split by requester department.
        """
        feed_columns = ["owner_department", "kind", "region", "feed_id"]
        if filters.requester_department:
            where = Where().filters(filters, ["requester_department", *feed_columns])
            return "usage_feeds_day", where.scope(self.scope)
        where = Where().filters(filters, feed_columns)
        if self.scope.is_city:
            return "feed_activity_day", where
        return "usage_scopes_day", where.add(
            "scope_department = {scope_department:String}", scope_department=self.scope.department
        )

    async def _contenders(
        self, period: Period, metric: TopMetric, daily: str, where: Where, limit: int
    ) -> Contenders | None:
        """The feeds that can still be among the first ``limit`` by a summed metric, or None
        when the per-day rows cannot narrow the ranking (no whole day in the period, or too
        many feeds left).

        From the per-day rollup alone, each feed's total over the period lies between its sum
        over the whole days (low) and its sum over every day the period touches (high: the
        partial days counted whole; the figures are never negative). At least ``limit`` feeds
        reach the ``limit``-th highest low, so a feed whose high is below it ranks after them
        all and is left out; every other feed is a contender. Exact: the answer is then
        computed over the contenders from rollups holding the same events.
        """
        first_hour = floor_time(period.start, Granularity.hour)
        spans = day_spans(first_hour, period.end)
        whole = [(span_start, span_end) for daily_span, span_start, span_end in spans if daily_span]
        if not whole:
            return None
        cover_start, cover_end = covering_days(first_hour, period.end)
        value = {TopMetric.retrievals: "retrievals", TopMetric.bytes: "bytes"}.get(
            metric, "seconds"
        )
        where.bind(
            whole_start=whole[0][0],
            whole_end=whole[0][1],
            cover_start=cover_start,
            cover_end=cover_end,
            rank=limit,
            most_contenders=MOST_CONTENDERS,
        )
        rows = await self.store.rows(
            "top_feeds_contenders",
            f"""
            SELECT length(contenders) <= {{most_contenders:UInt32}} AS narrowed,
                   if(narrowed, contenders, []) AS feeds, ranked
            FROM (
                SELECT arrayFilter(
                           (feed, high) -> high >= threshold * (1 - 1e-9), feed_ids, highs)
                           AS contenders,
                       length(feed_ids) AS ranked
                FROM (
                    SELECT groupArray(feed_id) AS feed_ids, groupArray(high) AS highs,
                           arrayReverseSort(groupArray(low))[{{rank:UInt32}}] AS threshold
                    FROM (
                        SELECT feed_id,
                               sumIf({value}, bucket >= {{whole_start:DateTime('UTC')}}
                                     AND bucket < {{whole_end:DateTime('UTC')}}) AS low,
                               sum({value}) AS high
                        FROM {daily}
                        WHERE bucket >= {{cover_start:DateTime('UTC')}}
                          AND bucket < {{cover_end:DateTime('UTC')}} AND {where.sql()}
                        GROUP BY feed_id
                    )
                )
            )
            """,
            where.parameters,
        )
        if not rows or not rows[0]["narrowed"]:
            return None
        return Contenders(feeds=list(rows[0]["feeds"]), ranked=int(rows[0]["ranked"]))

    def _departments(self, period: Period, where: Where) -> str:
        start = floor_time(period.start, Granularity.hour)
        return where.stitched(
            start,
            period.end,
            "usage_departments_hour",
            "usage_departments_day",
            _DEPARTMENT_COLUMNS,
        )

    def _feed_activity(self, period: Period, where: Where, *, states: bool = True) -> str:
        """Per-feed activity over the period; ``states=False`` leaves out the distinct-count
        states (sums only), which is all a ranking or an activity check needs."""
        start = floor_time(period.start, Granularity.hour)
        if not states:
            return where.stitched(
                start, period.end, "usage_feeds_hour", "feed_activity_day", _FEED_SUMS
            )
        return where.stitched(
            start,
            period.end,
            "usage_feeds_hour",
            "feed_activity_day",
            _FEED_COLUMNS,
            _FEED_COLUMNS_FROM_HOURS,
        )

    def _hourly(self, period: Period) -> Where:
        return (
            Where()
            .add(
                "bucket >= {start:DateTime('UTC')}",
                start=floor_time(period.start, Granularity.hour),
            )
            .add("bucket < {end:DateTime('UTC')}", end=period.end)
        )

    # ------------------------------------------------------------------ alerts

    async def alerts(
        self,
        period: Period,
        rules: list[str],
        severities: list[str],
        filters: UsageFilters,
        limit: int,
        offset: int,
    ) -> tuple[list[AlertRow], dict[str, int]]:
        where = (
            Where()
            .add("time >= {start:DateTime64(3, 'UTC')}", start=period.start)
            .add("time < {end:DateTime64(3, 'UTC')}", end=period.end)
            .filters(filters, ["owner_department", "requester_department", "feed_id"])
            .scope(self.scope)
        )
        if rules:
            where.add("rule IN {rules:Array(String)}", rules=rules)
        if severities:
            where.add("severity IN {severities:Array(String)}", severities=severities)
        counts = await self.store.rows(
            "alerts_count",
            f"SELECT rule, count() AS alerts FROM alerts FINAL WHERE {where.sql()} "
            "GROUP BY rule ORDER BY rule",
            where.parameters,
        )
        rows = await self.store.rows(
            "alerts",
            f"""
            SELECT toString(alert_id) AS alert_id, time, rule, severity, feed_id, owner_department,
                   requester_department, requester_user, grant_id, token_id, message, evidence
            FROM alerts FINAL
            WHERE {where.sql()}
            ORDER BY time DESC, alert_id
            LIMIT {{row_limit:UInt32}} OFFSET {{row_offset:UInt32}}
            """,
            {**where.parameters, "row_limit": limit, "row_offset": offset},
        )
        answer = [
            AlertRow(**{**row, "evidence": orjson.loads(row["evidence"] or "{}")}) for row in rows
        ]
        return answer, {row["rule"]: row["alerts"] for row in counts}

    # ------------------------------------------------------------------ decisions

    def _requests(self, period: Period, deadlines: dict[str, int], now: datetime) -> Where:
        return (
            Where()
            .add("requested_at >= {start:DateTime64(3, 'UTC')}", start=period.start)
            .add("requested_at < {end:DateTime64(3, 'UTC')}", end=period.end)
            .bind(
                deadline_departments=list(deadlines),
                deadline_days=list(deadlines.values()),
                default_deadline_days=DEFAULT_DEADLINE_DAYS,
                city_timezone=self.city_timezone,
                now=now,
            )
        )

    async def decisions(
        self, period: Period, filters: UsageFilters, deadlines: dict[str, int]
    ) -> tuple[DecisionTotals, list[DenyReason], list[DecisionDepartmentRow]]:
        now = datetime.now(UTC)
        where = self._requests(period, deadlines, now)
        where.filters(filters, ["owner_department", "requester_department"]).scope(self.scope)
        rows = await self.store.rows(
            "decisions",
            f"""
            WITH {_DEADLINE}
            SELECT owner_department, count() AS requests,
                   countIf(decision = 'granted') AS granted, countIf(decision = 'denied') AS denied,
                   countIf(NOT answered) AS pending, countIf(answered) AS answered_count,
                   countIf(answered AND decided_at <= deadline) AS within_deadline,
                   countIf(answered OR deadline <= {{now:DateTime64(3, 'UTC')}}) AS due,
                   quantileExactInclusiveIf(0.5)(seconds_to_decision, answered) AS median_seconds,
                   quantileExactInclusiveIf(0.95)(seconds_to_decision, answered) AS p95_seconds,
                   sumMapIf([reason], [toUInt64(1)], decision = 'denied') AS deny_reasons
            FROM decisions FINAL
            WHERE {where.sql()}
            GROUP BY owner_department
            ORDER BY owner_department
            """,
            where.parameters,
        )
        # Escalations are the deadline keeper's access.escalated events, counted once per
        # request and feed (the decisions table keeps only the latest state): their table.
        escalations = await self.store.rows(
            "escalations",
            f"""
            SELECT owner_department, uniqExact(request_id, feed_id) AS escalated
            FROM escalations
            WHERE {where.sql()}
            GROUP BY owner_department
            """,
            where.parameters,
        )
        escalated = {row["owner_department"]: int(row["escalated"]) for row in escalations}
        denials: Counter[str] = Counter()
        for row in rows:
            reasons, counts = row["deny_reasons"]
            denials.update(dict(zip(reasons, counts, strict=True)))
        departments = [
            DecisionDepartmentRow(
                owner_department=row["owner_department"],
                escalated=escalated.get(row["owner_department"], 0),
                requests=row["requests"],
                granted=row["granted"],
                denied=row["denied"],
                pending=row["pending"],
                answered=row["answered_count"],
                answered_within_deadline=row["within_deadline"],
                due=row["due"],
                share_within_deadline=_share(row["within_deadline"], row["due"]),
                median_seconds_to_decision=_finite(row["median_seconds"])
                if row["answered_count"]
                else None,
                p95_seconds_to_decision=_finite(row["p95_seconds"])
                if row["answered_count"]
                else None,
            )
            for row in rows
        ]
        totals = DecisionTotals(
            granted=sum(row.granted for row in departments),
            denied=sum(row.denied for row in departments),
            pending=sum(row.pending for row in departments),
            escalated=sum(row.escalated for row in departments),
        )
        return (
            totals,
            [
                DenyReason(reason=reason, count=count)
                for reason, count in sorted(denials.items(), key=lambda item: (-item[1], item[0]))
            ],
            departments,
        )

    # ------------------------------------------------------------------ feeds

    def _current_feeds(self, owners: list[str]) -> tuple[str, Where]:
        where = Where().add("NOT retired")
        if owners:
            where.add("owner_department IN {feed_owners:Array(String)}", feed_owners=owners)
        where.scope(self.scope, owner_only=True)
        sql = f"""
            SELECT feed_id, owner_department, name, kind, region, sharing_class,
                   status AS registry_status, registered_at, longitude
            FROM feed_metadata FINAL
            WHERE {where.sql()}
        """
        return sql, where

    async def dormant_feeds(
        self, period: Period, owners: list[str], limit: int, offset: int
    ) -> tuple[list[DormantFeedRow], int]:
        """Whether a feed was retrieved in the period comes from its first and last retrieval
        hours (feed_retrieval_span: one small row per feed) rather than a sum over a row per
        feed and day; the retrievals of the listed feeds that were retrieved (offline ones)
        are then summed for those feeds alone. A past period that some feed was retrieved both
        before and after cannot be told from the span: it is summed from the rollups."""
        feeds_sql, where = self._current_feeds(owners)
        activity_where = Where()
        if owners:
            activity_where.add(
                "owner_department IN {feed_owners:Array(String)}", feed_owners=owners
            )
        activity_where.scope(self.scope, owner_only=True)
        first_hour, end_hour = hour_numbers(period)
        activity_where.bind(first_hour=first_hour, end_hour=end_hour)
        spans = f"""
            SELECT feed_id, min(first_hour) AS first_retrieved, max(last_hour) AS last_retrieved
            FROM feed_retrieval_span
            WHERE {activity_where.sql()}
            GROUP BY feed_id
        """
        straddling = await self.store.rows(
            "dormant_feeds_spans",
            f"SELECT count() AS feeds FROM ({spans}) "
            "WHERE first_retrieved < {first_hour:UInt32} AND last_retrieved >= {end_hour:UInt32}",
            activity_where.parameters,
        )
        if straddling[0]["feeds"]:
            activity = self._feed_activity(period, activity_where, states=False)
            retrieved = f"""
                SELECT feed_id, sum(retrievals) > 0 AS retrieved FROM {activity} GROUP BY feed_id
            """
        else:
            retrieved = f"""
                SELECT feed_id, last_retrieved >= {{first_hour:UInt32}}
                                AND first_retrieved < {{end_hour:UInt32}} AS retrieved
                FROM ({spans})
            """
        parameters = {
            **where.parameters,
            **activity_where.parameters,
            "row_limit": limit,
            "row_offset": offset,
        }
        dormant = f"""
            SELECT m.feed_id AS feed_id, m.owner_department AS owner_department, m.name AS name,
                   m.kind AS kind, m.region AS region, m.registry_status AS registry_status,
                   s.liveness AS liveness, s.last_change AS liveness_changed_at,
                   NOT u.retrieved AS never_retrieved,
                   if(s.liveness != '', s.liveness, m.registry_status) = 'offline' AS offline,
                   s.liveness = '' AND m.registry_status NOT IN ('online', 'offline')
                       AS never_online
            FROM ({feeds_sql}) AS m
            LEFT JOIN ({_LATEST_LIVENESS}) AS s ON s.feed_id = m.feed_id
            LEFT JOIN ({retrieved}) AS u ON u.feed_id = m.feed_id
            WHERE never_retrieved OR offline OR never_online
        """
        rows = await self.store.rows(
            "dormant_feeds",
            f"SELECT *, count() OVER () AS total_feeds FROM ({dormant}) "
            "ORDER BY owner_department, feed_id "
            "LIMIT {row_limit:UInt32} OFFSET {row_offset:UInt32}",
            parameters,
        )
        retrieved_feeds = [row["feed_id"] for row in rows if not row["never_retrieved"]]
        retrievals = await self._feed_retrievals(period, activity_where, retrieved_feeds)
        answer = []
        for row in rows:
            reasons = [name for name in ("never_retrieved", "offline", "never_online") if row[name]]
            changed = row["liveness_changed_at"] if row["liveness"] else None
            answer.append(
                DormantFeedRow(
                    feed_id=row["feed_id"],
                    owner_department=row["owner_department"],
                    name=row["name"],
                    kind=row["kind"],
                    region=row["region"],
                    registry_status=row["registry_status"],
                    liveness=row["liveness"],
                    liveness_changed_at=changed,
                    retrievals=retrievals.get(row["feed_id"], 0),
                    reasons=reasons,
                )
            )
        if rows or offset == 0:
            return answer, int(rows[0]["total_feeds"]) if rows else 0
        total = await self.store.rows(
            "dormant_count", f"SELECT count() AS feeds FROM ({dormant})", parameters
        )
        return answer, int(total[0]["feeds"])

    async def _feed_retrievals(
        self, period: Period, where: Where, feeds: list[str]
    ) -> dict[str, int]:
        """Retrievals in the period of these feeds only, from the hourly rollup ordered by
        feed: only the listed feeds' rows are read."""
        if not feeds:
            return {}
        hourly = self._hourly(period)
        scoped = Where(
            where.conditions + hourly.conditions, {**where.parameters, **hourly.parameters}
        ).add("feed_id IN {listed_feeds:Array(String)}", listed_feeds=feeds)
        rows = await self.store.rows(
            "dormant_feed_retrievals",
            f"""
            SELECT feed_id, sum(retrievals) AS feed_retrievals
            FROM usage_feeds_hour_by_feed
            WHERE {scoped.sql()}
            GROUP BY feed_id
            """,
            scoped.parameters,
        )
        return {row["feed_id"]: int(row["feed_retrievals"]) for row in rows}

    # ------------------------------------------------------------------ scorecards

    async def scorecards(
        self, period: Period, departments: list[str], deadlines: dict[str, int]
    ) -> list[ScorecardRow]:
        feeds_sql, feeds_where = self._current_feeds([])
        catalog = await self.store.rows(
            "scorecard_feeds",
            f"""
            SELECT m.owner_department AS department, count() AS feeds,
                   countIf(m.sharing_class = 'unconditional') AS unconditional,
                   countIf(m.sharing_class = 'conditional') AS conditional,
                   countIf(m.sharing_class = 'not_shared') AS not_shared,
                   countIf(m.longitude IS NULL) AS unplaced,
                   countIf(if(s.liveness != '', s.liveness, m.registry_status) = 'online') AS online
            FROM ({feeds_sql}) AS m
            LEFT JOIN ({_LATEST_LIVENESS}) AS s ON s.feed_id = m.feed_id
            GROUP BY department
            """,
            feeds_where.parameters,
        )
        requests_where = self._requests(period, deadlines, datetime.now(UTC)).scope(
            self.scope, owner_only=True
        )
        requests = await self.store.rows(
            "scorecard_requests",
            f"""
            WITH {_DEADLINE}
            SELECT owner_department AS department, count() AS received,
                   countIf(answered) AS answered_count,
                   countIf(answered OR deadline <= {{now:DateTime64(3, 'UTC')}}) AS due,
                   countIf(answered AND decided_at <= deadline) AS in_time
            FROM decisions FINAL
            WHERE {requests_where.sql()}
            GROUP BY department
            """,
            requests_where.parameters,
        )
        usage_where = Where().scope(self.scope)
        usage_source = self._departments(period, usage_where)
        usage = await self.store.rows(
            "scorecard_usage",
            f"""
            SELECT department,
                   sumIf(pair_retrievals, side = 'owner') AS by_others,
                   sumIf(pair_bytes, side = 'owner') AS bytes_by_others,
                   uniqExactIf(counterpart, side = 'owner' AND pair_retrievals > 0) AS served,
                   sumIf(pair_retrievals, side = 'requester') AS of_others,
                   uniqExactIf(counterpart, side = 'requester' AND pair_retrievals > 0) AS used
            FROM (
                SELECT arrayJoin([('owner', owner_department, requester_department),
                                  ('requester', requester_department, owner_department)]) AS pair,
                       pair.1 AS side, pair.2 AS department, pair.3 AS counterpart,
                       sum(retrievals) AS pair_retrievals, sum(bytes) AS pair_bytes
                FROM {usage_source}
                WHERE owner_department != requester_department AND requester_department != ''
                GROUP BY pair
            )
            GROUP BY department
            """,
            usage_where.parameters,
        )
        return self._scorecard_rows(departments, catalog, requests, usage)

    def _scorecard_rows(
        self,
        departments: list[str],
        catalog: list[dict[str, Any]],
        requests: list[dict[str, Any]],
        usage: list[dict[str, Any]],
    ) -> list[ScorecardRow]:
        figures: dict[str, dict[str, Any]] = defaultdict(dict)
        for rows in (catalog, requests, usage):
            for row in rows:
                figures[row["department"]].update(row)
        names = set(departments) | set(figures)
        if not self.scope.is_city:
            names = {self.scope.label}
        answer = []
        for name in sorted(name for name in names if name):
            row = figures.get(name, {})
            feeds = int(row.get("feeds", 0))
            due = int(row.get("due", 0))
            answer.append(
                ScorecardRow(
                    department=name,
                    feeds=feeds,
                    feeds_unconditional=int(row.get("unconditional", 0)),
                    feeds_conditional=int(row.get("conditional", 0)),
                    feeds_not_shared=int(row.get("not_shared", 0)),
                    feeds_online=int(row.get("online", 0)),
                    feeds_unplaced=int(row.get("unplaced", 0)),
                    availability=_share(int(row.get("online", 0)), feeds),
                    requests_received=int(row.get("received", 0)),
                    requests_answered=int(row.get("answered_count", 0)),
                    requests_due=due,
                    requests_answered_in_time=int(row.get("in_time", 0)),
                    share_answered_in_time=_share(int(row.get("in_time", 0)), due),
                    retrievals_by_others=int(row.get("by_others", 0)),
                    bytes_by_others=int(row.get("bytes_by_others", 0)),
                    departments_served=int(row.get("served", 0)),
                    retrievals_of_others=int(row.get("of_others", 0)),
                    departments_used=int(row.get("used", 0)),
                )
            )
        return answer
