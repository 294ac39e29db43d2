"""Asking for access: which feeds a request names, the policy decision per feed, grants for
what may be shared at once; and the request as the API shows it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.feed_views import FeedFacts, load_feed_facts, sharing_view
from registry_api.access.models import AccessRequest, AccessRequestFeed
from registry_api.access.policy import (
    EmergencyNotAllowed,
    PolicyContext,
    PolicyDecision,
    RequestFacts,
    decide,
)
from registry_api.access.records import TABLES, event_data, grant_issued_event, grant_row, new_id
from registry_api.audit.service import AccessEvent, record_access_events
from registry_api.bulk_insert import execute_insert, prepare_insert
from registry_api.errors import ApiError, Forbidden, NotFound, Unprocessable
from registry_api.feeds.service import search_feed_ids
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.models import Department
from registry_api.identity.principal import Principal
from schemas.access import (
    AccessAction,
    AccessRequestCreate,
    AccessRequestOut,
    FeedDecisionOut,
    Outcome,
    ReasonCode,
    RequestStatus,
)
from schemas.events import EventType, utcnow
from schemas.identity import Role
from schemas.settings import Settings

REQUESTING_ROLES = (Role.requester, Role.dept_admin)


@dataclass(frozen=True)
class RequestedFeeds:
    ids: list[str]
    facts: dict[str, FeedFacts]


async def resolve_requested_feeds(
    session: AsyncSession, index: FeedIndex | None, payload: AccessRequestCreate
) -> RequestedFeeds:
    """The feeds named by id, or found by the registry's own search for a spatial selection."""
    if payload.selection is not None:
        if index is None:
            raise ApiError(
                "the feed index is not loaded yet", code="index_unavailable", status_code=503
            )
        ids = await search_feed_ids(index, payload.selection, session)
    else:
        ids = list(dict.fromkeys(payload.feed_ids or []))
    return RequestedFeeds(ids=ids, facts=await load_feed_facts(session, ids))


async def _departments(session: AsyncSession, codes: Iterable[str]) -> dict[str, Department]:
    wanted = set(codes)
    if not wanted:
        return {}
    rows = await session.scalars(select(Department).where(Department.code.in_(wanted)))
    return {department.code: department for department in rows}


async def create_access_request(
    session: AsyncSession,
    settings: Settings,
    index: FeedIndex | None,
    principal: Principal,
    payload: AccessRequestCreate,
) -> AccessRequestOut:
    if principal.department is None:
        raise Forbidden("only a department's users can request access", code="department_required")
    now = utcnow()
    valid_from = payload.valid_from or now
    valid_until = valid_from + timedelta(minutes=payload.duration_minutes)
    if valid_until <= now:
        raise Unprocessable("the requested window has already ended", code="window_in_the_past")
    feeds = await resolve_requested_feeds(session, index, payload)
    if not feeds.ids:
        raise Unprocessable("the request names no feed (the selection found none)", code="no_feeds")
    owners = {facts.owner for facts in feeds.facts.values()}
    departments = await _departments(session, owners | {principal.department})
    requester_department = departments.get(principal.department)
    if requester_department is None:
        raise Forbidden(
            f"department {principal.department!r} is not registered", code="unknown_department"
        )

    request = AccessRequest(
        id=new_id(),
        requester=principal.subject,
        requester_department=principal.department,
        purpose=payload.purpose,
        actions=sorted(action.value for action in payload.actions),
        valid_from=valid_from,
        valid_until=valid_until,
        emergency=payload.emergency,
        emergency_reason=payload.emergency_reason,
        area=payload.area.model_dump() if payload.area is not None else None,
        selection=payload.selection.model_dump(mode="json", exclude_none=True)
        if payload.selection
        else None,
        created_at=now,
    )
    facts = RequestFacts(
        requester_department=principal.department,
        requester_department_kind=requester_department.kind,
        purpose=payload.purpose,
        actions=frozenset(payload.actions),
        valid_from=valid_from,
        valid_until=valid_until,
        emergency=payload.emergency,
        emergency_reason=payload.emergency_reason,
        area=payload.area.to_shapely() if payload.area is not None else None,
    )
    timezone = ZoneInfo(settings.city_timezone)
    decisions: list[tuple[str, str | None, PolicyDecision]] = []
    for feed_id in feeds.ids:
        feed = feeds.facts.get(feed_id)
        if feed is None:
            missing = PolicyDecision(
                Outcome.denied, ReasonCode.feed_not_found, f"no feed {feed_id!r}"
            )
            decisions.append((feed_id, None, missing))
            continue
        context = PolicyContext(
            now=now,
            owner_deadline_days=departments[feed.owner].answer_deadline_days
            if feed.owner in departments
            else 5,
            emergency_grant_minutes=settings.emergency_grant_minutes,
            timezone=timezone,
        )
        try:
            decisions.append((feed_id, feed.owner, decide(sharing_view(feed), facts, context)))
        except EmergencyNotAllowed as error:
            raise Forbidden(str(error), code="emergency_not_allowed") from None

    # One grant per owner department for everything the policy granted at once.
    grants: dict[str, dict[str, object]] = {}
    for _, owner, decision in decisions:
        if decision.outcome is Outcome.granted and owner is not None and owner not in grants:
            grants[owner] = grant_row(request, owner, decision, now)

    items: list[dict[str, object]] = []
    events: list[AccessEvent] = []
    for feed_id, owner, decision in decisions:
        grant = grants.get(owner) if decision.outcome is Outcome.granted and owner else None
        grant_id = str(grant["id"]) if grant else None
        decided_at = now if decision.outcome is not Outcome.pending else None
        items.append(
            {
                "request_id": request.id,
                "feed_id": feed_id,
                "owner_department": owner,
                "outcome": decision.outcome.value,
                "reason": decision.reason.value,
                "message": decision.message[:1200],
                "actions": sorted(decision.actions or facts.actions),
                "due_at": decision.due_at,
                "decided_at": decided_at,
                "decided_by": "policy" if decided_at else None,
                "grant_id": grant_id,
                "review_required": decision.review_required,
            }
        )
        events.append(
            AccessEvent(
                EventType.ACCESS_REQUESTED,
                event_data(request, feed_id, owner, request.actions),
                principal.subject,
                occurred_at=now,
            )
        )
        events.append(
            AccessEvent(
                EventType.ACCESS_DECIDED,
                event_data(
                    request,
                    feed_id,
                    owner,
                    decision.actions or facts.actions,
                    decision=decision.outcome.value,
                    reason=decision.reason.value,
                    decided_at=decided_at,
                    grant_id=grant_id,
                ),
                "policy",
                occurred_at=now,
            )
        )
        if grant is not None:
            events.append(grant_issued_event(request, feed_id, grant, "policy", now))

    # Driver-level inserts: one request writes a hundred rows to each table.
    dialect = (await session.connection()).dialect
    request_row = {column.name: getattr(request, column.name) for column in TABLES.requests.columns}
    await execute_insert(session, prepare_insert(TABLES.requests, [request_row], dialect))
    if grants:
        await execute_insert(session, prepare_insert(TABLES.grants, list(grants.values()), dialect))
        grant_feeds = [
            {"grant_id": item["grant_id"], "feed_id": item["feed_id"]}
            for item in items
            if item["grant_id"]
        ]
        await execute_insert(session, prepare_insert(TABLES.grant_feeds, grant_feeds, dialect))
    await execute_insert(session, prepare_insert(TABLES.request_feeds, items, dialect))
    await record_access_events(session, events)
    await session.commit()
    return request_out(request, [AccessRequestFeed(**item) for item in items])


def _status(items: Sequence[AccessRequestFeed]) -> RequestStatus:
    outcomes = {item.outcome for item in items}
    if Outcome.pending.value in outcomes:
        return RequestStatus.pending
    if outcomes == {Outcome.granted.value}:
        return RequestStatus.granted
    if outcomes == {Outcome.denied.value}:
        return RequestStatus.denied
    return RequestStatus.partial


def request_out(request: AccessRequest, items: Sequence[AccessRequestFeed]) -> AccessRequestOut:
    counts = {outcome.value: 0 for outcome in Outcome}
    for item in items:
        counts[item.outcome] += 1
    return AccessRequestOut(
        id=request.id,
        requester=request.requester,
        requester_department=request.requester_department,
        purpose=request.purpose,
        actions=[AccessAction(action) for action in request.actions],
        valid_from=request.valid_from,
        valid_until=request.valid_until,
        emergency=request.emergency,
        emergency_reason=request.emergency_reason,
        status=_status(items) if items else RequestStatus.denied,
        created_at=request.created_at,
        counts=counts,
        feeds=[
            FeedDecisionOut(
                feed_id=item.feed_id,
                owner_department=item.owner_department,
                outcome=Outcome(item.outcome),
                reason=ReasonCode(item.reason),
                message=item.message,
                actions=[AccessAction(action) for action in item.actions],
                grant_id=item.grant_id,
                due_at=item.due_at,
                decided_at=item.decided_at,
                decided_by=item.decided_by,
                review_required=item.review_required,
            )
            for item in items
        ],
    )


async def load_request(
    session: AsyncSession, request_id: str
) -> tuple[AccessRequest, list[AccessRequestFeed]]:
    request = await session.get(AccessRequest, request_id)
    if request is None:
        raise NotFound(f"no access request {request_id!r}", code="unknown_access_request")
    items = list(
        (
            await session.scalars(
                select(AccessRequestFeed)
                .where(AccessRequestFeed.request_id == request_id)
                .order_by(AccessRequestFeed.feed_id)
                .execution_options(populate_existing=True)
            )
        ).all()
    )
    return request, items
