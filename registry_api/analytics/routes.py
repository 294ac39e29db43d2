"""`/v1/analytics/*`: usage, sharing, alerts, decisions, dormant feeds and scorecards.

Operators and the city administrator see the whole city; everyone else sees the rows in which
their department is the owner or the requester (for feed lists and scorecards: their own
feeds and their own scorecard). Every answer is JSON, or CSV of its rows with
``Accept: text/csv``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import StringConstraints
from sqlalchemy import select

from registry_api.analytics.csv_export import csv_response, wants_csv
from registry_api.analytics.schemas import (
    AlertRow,
    AlertsAnswer,
    DecisionDepartmentRow,
    DecisionsAnswer,
    DormantFeedRow,
    DormantFeedsAnswer,
    Granularity,
    GroupBy,
    Period,
    Scope,
    ScorecardRow,
    ScorecardsAnswer,
    SharingCell,
    SharingMatrixAnswer,
    TopFeedRow,
    TopFeedsAnswer,
    TopMetric,
    UsageAnswer,
    UsageFilters,
    UsageRow,
)
from registry_api.analytics.service import AnalyticsService
from registry_api.analytics.store import AnalyticsStore
from registry_api.dependencies import PrincipalDep, RuntimeDep, SessionDep
from registry_api.errors import Forbidden, Unprocessable
from registry_api.identity.models import Department
from schemas.identity import DEPARTMENT_CODE_PATTERN, Role
from schemas.times import UtcTime

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])

DEFAULT_PERIOD = timedelta(hours=24)
LONGEST_PERIOD = timedelta(days=3 * 366)
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV"}
}

DepartmentCode = Annotated[str, StringConstraints(pattern=DEPARTMENT_CODE_PATTERN)]
FeedId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
Region = Annotated[str, StringConstraints(pattern=r"^\d{2,8}$")]
Kind = Annotated[str, StringConstraints(pattern=r"^(camera|sensor)$")]
Rule = Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,64}$")]
Severity = Annotated[str, StringConstraints(pattern=r"^(info|warning|critical)$")]


def analytics_scope(principal: PrincipalDep) -> Scope:
    if principal.has_any(Role.operator):
        return Scope(department=None)
    if principal.department is None:
        raise Forbidden("analytics need a department or the operator role", code="no_department")
    return Scope(department=principal.department)


ScopeDep = Annotated[Scope, Depends(analytics_scope)]


def analytics_service(runtime: RuntimeDep, scope: ScopeDep) -> AnalyticsService:
    settings = runtime.settings
    return AnalyticsService(AnalyticsStore(settings.clickhouse_url), scope, settings.city_timezone)


ServiceDep = Annotated[AnalyticsService, Depends(analytics_service)]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def period(
    start: Annotated[
        UtcTime | None,
        Query(alias="from", description="Start (ISO 8601; UTC if no zone); default to - 24 h"),
    ] = None,
    end: Annotated[
        UtcTime | None, Query(alias="to", description="End, excluded; default now")
    ] = None,
) -> Period:
    period_end = _utc(end) if end else datetime.now(UTC)
    period_start = _utc(start) if start else period_end - DEFAULT_PERIOD
    if period_start >= period_end:
        raise Unprocessable("`from` must be before `to`", code="empty_period")
    if period_end - period_start > LONGEST_PERIOD:
        raise Unprocessable("a period may span at most three years", code="period_too_long")
    return Period(start=period_start, end=period_end)


PeriodDep = Annotated[Period, Depends(period)]


def usage_filters(
    owner_department: Annotated[
        list[DepartmentCode] | None, Query(description="Owner departments")
    ] = None,
    requester_department: Annotated[
        list[DepartmentCode] | None, Query(description="Requesting departments")
    ] = None,
    feed_id: Annotated[list[FeedId] | None, Query(description="Feeds")] = None,
    kind: Annotated[list[Kind] | None, Query(description="camera or sensor")] = None,
    region: Annotated[
        list[Region] | None, Query(description="District codes (GB/T 2260, 6 digits)")
    ] = None,
) -> UsageFilters:
    return UsageFilters(
        owner_department=owner_department or [],
        requester_department=requester_department or [],
        feed_id=feed_id or [],
        kind=kind or [],
        region=region or [],
    )


FiltersDep = Annotated[UsageFilters, Depends(usage_filters)]


def refuse_filters(filters: UsageFilters, *names: str) -> None:
    """422 for filters an answer cannot apply (its tables lack the column): ignoring them
    would answer unfiltered rows as if they were filtered."""
    given = [name for name in names if getattr(filters, name)]
    if given:
        raise Unprocessable(
            f"{', '.join(given)} cannot filter this answer", code="unsupported_filter"
        )


async def answer_deadlines(session: SessionDep) -> dict[str, int]:
    """Working days each owner department has to answer a request (its own setting)."""
    rows = await session.execute(select(Department.code, Department.answer_deadline_days))
    return {code: int(days) for code, days in rows.all()}


async def department_codes(session: SessionDep) -> list[str]:
    return list((await session.scalars(select(Department.code).order_by(Department.code))).all())


def _common(period_: Period, scope: Scope) -> dict[str, Any]:
    return {"from": period_.start, "to": period_.end, "scope": scope.label}


@router.get("/usage", response_model=UsageAnswer, responses=CSV_RESPONSE, summary="Usage over time")
async def usage(
    request: Request,
    service: ServiceDep,
    scope: ScopeDep,
    period_: PeriodDep,
    filters: FiltersDep,
    granularity: Granularity = Granularity.hour,
    group_by: GroupBy = GroupBy.owner_department,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Any:
    """Retrievals, denied retrievals, bytes, seconds and distinct requesters per time bucket
    and group, from the per-minute or per-hour rollups. Buckets starting in [from, to) are
    counted, the bucket holding `from` included."""
    rows, truncated = await service.usage(period_, granularity, group_by, filters, limit)
    if wants_csv(request):
        return csv_response(rows, UsageRow, "usage")
    return UsageAnswer(
        **_common(period_, scope),
        granularity=granularity,
        group_by=group_by,
        rows=rows,
        truncated=truncated,
    )


@router.get(
    "/sharing-matrix",
    response_model=SharingMatrixAnswer,
    responses=CSV_RESPONSE,
    summary="Who uses whose feeds",
)
async def sharing_matrix(
    request: Request, service: ServiceDep, scope: ScopeDep, period_: PeriodDep, filters: FiltersDep
) -> Any:
    """Owner department x requester department: retrievals, bytes, seconds, requesters
    (hourly rollup; the hour holding `from` included)."""
    refuse_filters(filters, "feed_id")
    rows = await service.sharing_matrix(period_, filters)
    if wants_csv(request):
        return csv_response(rows, SharingCell, "sharing-matrix")
    departments = sorted(
        {row.owner_department for row in rows} | {row.requester_department for row in rows}
    )
    return SharingMatrixAnswer(**_common(period_, scope), departments=departments, rows=rows)


@router.get(
    "/top-feeds", response_model=TopFeedsAnswer, responses=CSV_RESPONSE, summary="Most used feeds"
)
async def top_feeds(
    request: Request,
    service: ServiceDep,
    scope: ScopeDep,
    period_: PeriodDep,
    filters: FiltersDep,
    metric: TopMetric = TopMetric.retrievals,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 20,
) -> Any:
    """The feeds with the most retrievals (or bytes, seconds, requesters) in the period."""
    rows = await service.top_feeds(period_, metric, filters, limit)
    if wants_csv(request):
        return csv_response(rows, TopFeedRow, "top-feeds")
    return TopFeedsAnswer(**_common(period_, scope), metric=metric, rows=rows)


@router.get(
    "/alerts", response_model=AlertsAnswer, responses=CSV_RESPONSE, summary="Anomalies raised"
)
async def alerts(
    request: Request,
    service: ServiceDep,
    scope: ScopeDep,
    period_: PeriodDep,
    filters: FiltersDep,
    rule: Annotated[list[Rule] | None, Query(description="Only these rules")] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Any:
    """Alerts raised by the stream agents, newest first, with counts per rule."""
    refuse_filters(filters, "kind", "region")
    rows, counts = await service.alerts(period_, rule or [], severity or [], filters, limit, offset)
    if wants_csv(request):
        return csv_response(rows, AlertRow, "alerts")
    return AlertsAnswer(
        **_common(period_, scope), counts=counts, total=sum(counts.values()), rows=rows
    )


@router.get(
    "/decisions",
    response_model=DecisionsAnswer,
    responses=CSV_RESPONSE,
    summary="How requests are answered",
)
async def decisions(
    request: Request,
    service: ServiceDep,
    scope: ScopeDep,
    period_: PeriodDep,
    filters: FiltersDep,
    deadlines: Annotated[dict[str, int], Depends(answer_deadlines)],
) -> Any:
    """Requests made in the period: granted / denied / pending, deny reasons, and per owner
    department the time to decision (median, p95), the share answered within its deadline
    (its `answer_deadline_days`, counted in working days) and how many feeds were escalated
    because their due time passed unanswered."""
    refuse_filters(filters, "feed_id", "kind", "region")
    totals, reasons, rows = await service.decisions(period_, filters, deadlines)
    if wants_csv(request):
        return csv_response(rows, DecisionDepartmentRow, "decisions")
    return DecisionsAnswer(
        **_common(period_, scope), totals=totals, deny_reasons=reasons, rows=rows
    )


@router.get(
    "/dormant-feeds",
    response_model=DormantFeedsAnswer,
    responses=CSV_RESPONSE,
    summary="Catalog entries not linked to a live, used resource",
)
async def dormant_feeds(
    request: Request,
    service: ServiceDep,
    scope: ScopeDep,
    period_: PeriodDep,
    owner_department: Annotated[list[DepartmentCode] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    """Registered feeds never retrieved in the period, offline, or never seen online."""
    rows, total = await service.dormant_feeds(period_, owner_department or [], limit, offset)
    if wants_csv(request):
        return csv_response(rows, DormantFeedRow, "dormant-feeds")
    return DormantFeedsAnswer(**_common(period_, scope), total=total, rows=rows)


@router.get(
    "/scorecards",
    response_model=ScorecardsAnswer,
    responses=CSV_RESPONSE,
    summary="Sharing assessment",
)
async def scorecards(
    request: Request,
    service: ServiceDep,
    scope: ScopeDep,
    period_: PeriodDep,
    deadlines: Annotated[dict[str, int], Depends(answer_deadlines)],
    departments: Annotated[list[str], Depends(department_codes)],
) -> Any:
    """Per department, the figures of a yearly sharing assessment: feeds shared by class,
    availability, requests received and answered in time, use of its feeds by others and
    its use of others' feeds."""
    rows = await service.scorecards(period_, departments, deadlines)
    if wants_csv(request):
        return csv_response(rows, ScorecardRow, "scorecards")
    return ScorecardsAnswer(**_common(period_, scope), rows=rows)
