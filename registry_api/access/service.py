"""Access requests, owner decisions, grants, revocation, retrieval: plain functions over a session.

Each write commits its rows, its audit-chain links and its outbox events in one transaction.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.feed_views import FeedFacts, gateway_path, load_feed_facts, sharing_view
from registry_api.access.models import AccessRequest, AccessRequestFeed, Grant, GrantFeed
from registry_api.access.policy import (
    EmergencyNotAllowed,
    PolicyContext,
    PolicyDecision,
    RequestFacts,
    decide,
)
from registry_api.access.retrieval import retrieval_urls
from registry_api.audit.service import AccessEvent, record_access_events
from registry_api.bulk_insert import execute_insert, prepare_insert
from registry_api.db import rows_matched
from registry_api.errors import ApiError, Conflict, Forbidden, NotFound, Unprocessable
from registry_api.feeds.service import search_feed_ids
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.models import Department
from registry_api.identity.principal import Principal
from registry_api.tokens.service import RetrievalTokens
from schemas.access import (
    AccessAction,
    AccessRequestCreate,
    AccessRequestOut,
    FeedDecisionOut,
    FeedRetrieval,
    GrantOut,
    Outcome,
    OwnerDecision,
    ReasonCode,
    RequestStatus,
    RetrievalOut,
)
from schemas.events import AccessEventData, EventType, utcnow
from schemas.identity import Role
from schemas.settings import Settings

REQUESTING_ROLES = (Role.requester, Role.dept_admin)
REVIEW = "review"

# Told of each revocation right after it commits: the in-memory revocation set of this process.
RevocationListener = Callable[[str, datetime], None]


class Gone(ApiError):
    status_code = 410
    code = "gone"


class TABLES:
    requests = cast(Table, AccessRequest.__table__)
    request_feeds = cast(Table, AccessRequestFeed.__table__)
    grants = cast(Table, Grant.__table__)
    grant_feeds = cast(Table, GrantFeed.__table__)


def new_id() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------ requesting


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
        ids = await search_feed_ids(index, payload.selection)
    else:
        ids = list(dict.fromkeys(payload.feed_ids or []))
    return RequestedFeeds(ids=ids, facts=await load_feed_facts(session, ids))


async def _departments(session: AsyncSession, codes: Iterable[str]) -> dict[str, Department]:
    wanted = set(codes)
    if not wanted:
        return {}
    rows = await session.scalars(select(Department).where(Department.code.in_(wanted)))
    return {department.code: department for department in rows}


def _event_data(
    request: AccessRequest,
    feed_id: str,
    owner: str | None,
    actions: Iterable[str],
    **fields: object,
) -> AccessEventData:
    values: dict[str, object] = {
        "feed_id": feed_id,
        "requester_department": request.requester_department,
        "requester_user": request.requester,
        "owner_department": owner,
        "request_id": request.id,
        "action": ",".join(sorted(actions)) or None,
        "purpose": request.purpose,
        "emergency": request.emergency,
        "requested_at": request.created_at,
    }
    values.update(fields)
    return AccessEventData.model_validate(values)


def _grant_row(
    request: AccessRequest, owner: str, decision: PolicyDecision, now: datetime
) -> dict[str, object]:
    assert decision.valid_from is not None and decision.valid_until is not None
    return {
        "id": new_id(),
        "request_id": request.id,
        "requester": request.requester,
        "requester_department": request.requester_department,
        "owner_department": owner,
        "actions": sorted(decision.actions),
        "valid_from": decision.valid_from,
        "valid_until": decision.valid_until,
        "emergency": decision.emergency,
        "review_required": decision.review_required,
        "created_at": now,
    }


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
            grants[owner] = _grant_row(request, owner, decision, now)

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
                _event_data(request, feed_id, owner, request.actions),
                principal.subject,
                occurred_at=now,
            )
        )
        events.append(
            AccessEvent(
                EventType.ACCESS_DECIDED,
                _event_data(
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
            events.append(_grant_issued_event(request, feed_id, grant, "policy", now))

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
    return _request_out(request, [AccessRequestFeed(**item) for item in items])


def _grant_issued_event(
    request: AccessRequest, feed_id: str, grant: dict[str, object], actor: str, now: datetime
) -> AccessEvent:
    return AccessEvent(
        EventType.GRANT_ISSUED,
        _event_data(
            request,
            feed_id,
            str(grant["owner_department"]),
            cast(list[str], grant["actions"]),
            decision="granted",
            grant_id=str(grant["id"]),
            decided_at=now,
            grant_valid_from=grant["valid_from"],
            grant_valid_until=grant["valid_until"],
            emergency=bool(grant["emergency"]),
        ),
        actor,
        occurred_at=now,
    )


# ------------------------------------------------------------------------------ reading


def _status(items: Sequence[AccessRequestFeed]) -> RequestStatus:
    outcomes = {item.outcome for item in items}
    if Outcome.pending.value in outcomes:
        return RequestStatus.pending
    if outcomes == {Outcome.granted.value}:
        return RequestStatus.granted
    if outcomes == {Outcome.denied.value}:
        return RequestStatus.denied
    return RequestStatus.partial


def _request_out(request: AccessRequest, items: Sequence[AccessRequestFeed]) -> AccessRequestOut:
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


def reads_owner_side(principal: Principal, owner_department: str | None) -> bool:
    """Who may read the owner side of access (the requests for a department's feeds, the
    grants others hold on them, with requesters' names and emergency flags): the owner
    department's dept_admin or auditor, and the city admin. The one rule for the inbox, the
    owner's grant list and every single request and grant read as the owner."""
    return principal.is_city_admin or (
        owner_department is not None
        and principal.department == owner_department
        and principal.has_any(Role.dept_admin, Role.auditor)
    )


def _require_owner_side(principal: Principal, what: str) -> None:
    if reads_owner_side(principal, principal.department):
        return
    raise Forbidden(f"{what} needs dept_admin or auditor", code="role_required")


def _visible_items(
    principal: Principal, request: AccessRequest, items: Sequence[AccessRequestFeed]
) -> list[AccessRequestFeed] | None:
    """What of a request the caller may see: all of it as its department, the owner's own feeds
    as an owner's admin or auditor; None when nothing."""
    if principal.is_city_admin or principal.department == request.requester_department:
        return list(items)
    own = [item for item in items if reads_owner_side(principal, item.owner_department)]
    return own or None


async def _load_request(
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


async def _load_visible_request(
    session: AsyncSession, principal: Principal, request_id: str
) -> tuple[AccessRequest, list[AccessRequestFeed], list[AccessRequestFeed]]:
    """The request, its items and those the caller may see; a request the caller may not see
    is answered exactly as one that does not exist."""
    request, items = await _load_request(session, request_id)
    visible = _visible_items(principal, request, items)
    if visible is None:
        raise NotFound(f"no access request {request_id!r}", code="unknown_access_request")
    return request, items, visible


async def get_access_request(
    session: AsyncSession, principal: Principal, request_id: str
) -> AccessRequestOut:
    request, _, visible = await _load_visible_request(session, principal, request_id)
    return _request_out(request, visible)


async def list_access_requests(
    session: AsyncSession,
    principal: Principal,
    *,
    status: str | None,
    as_owner: bool,
    before: datetime | None,
    limit: int,
) -> list[AccessRequestOut]:
    """As owner: requests touching the caller's department's feeds (its inbox with
    ``status=pending``, emergency grants to review with ``status=review``). As requester: the
    caller's department's own requests, with at least one feed in ``status`` if given."""
    if principal.department is None and not principal.is_city_admin:
        raise Forbidden("this needs a department", code="department_required")
    item_filter = []
    if as_owner:
        _require_owner_side(principal, "the owner's inbox")
        if not principal.is_city_admin:
            item_filter.append(AccessRequestFeed.owner_department == principal.department)
    if status == REVIEW:
        item_filter.append(AccessRequestFeed.review_required.is_(True))
    elif status is not None:
        item_filter.append(AccessRequestFeed.outcome == status)
    query = select(AccessRequest)
    if item_filter:
        query = query.where(
            exists().where(AccessRequestFeed.request_id == AccessRequest.id, *item_filter)
        )
    if not as_owner and not principal.is_city_admin:
        query = query.where(AccessRequest.requester_department == principal.department)
    if before is not None:
        query = query.where(AccessRequest.created_at < before)
    requests = list(
        (
            await session.scalars(
                query.order_by(AccessRequest.created_at.desc(), AccessRequest.id).limit(limit)
            )
        ).all()
    )
    if not requests:
        return []
    by_request: dict[str, list[AccessRequestFeed]] = defaultdict(list)
    item_query = select(AccessRequestFeed).where(
        AccessRequestFeed.request_id.in_([request.id for request in requests])
    )
    if as_owner and not principal.is_city_admin:
        item_query = item_query.where(AccessRequestFeed.owner_department == principal.department)
    for item in await session.scalars(item_query.order_by(AccessRequestFeed.feed_id)):
        by_request[item.request_id].append(item)
    return [_request_out(request, by_request[request.id]) for request in requests]


# ------------------------------------------------------------------------------ owner decisions


def _select_items(
    principal: Principal,
    items: Sequence[AccessRequestFeed],
    feed_ids: list[str] | None,
) -> list[AccessRequestFeed]:
    """The items this owner decision covers: each pending or awaiting review, each the caller's."""
    if not principal.has_any(Role.dept_admin):
        raise Forbidden("deciding needs the owner's dept_admin", code="role_required")
    undecided = [
        item
        for item in items
        if item.owner_department is not None
        and (item.outcome == Outcome.pending.value or item.review_required)
    ]
    if feed_ids is None:
        chosen = [item for item in undecided if principal.administers(item.owner_department or "")]
        if not chosen:
            raise Conflict(
                "nothing in this request waits for your decision", code="nothing_to_decide"
            )
        return chosen
    by_feed = {item.feed_id: item for item in items}
    chosen = []
    for feed_id in dict.fromkeys(feed_ids):
        item = by_feed.get(feed_id)
        if item is None:
            raise NotFound(
                f"feed {feed_id!r} is not part of this request", code="feed_not_in_request"
            )
        if not principal.administers(item.owner_department or ""):
            raise Forbidden(f"feed {feed_id!r} belongs to another department", code="not_the_owner")
        if item not in undecided:
            raise Conflict(f"feed {feed_id!r} is already decided", code="already_decided")
        chosen.append(item)
    return chosen


async def _claim(
    session: AsyncSession,
    request_id: str,
    chosen: Sequence[AccessRequestFeed],
    values: dict[str, object],
) -> None:
    """Updates the chosen items only if still undecided: two concurrent decisions never both win."""
    pending = [item.feed_id for item in chosen if item.outcome == Outcome.pending.value]
    review = [item.feed_id for item in chosen if item.outcome != Outcome.pending.value]
    for feed_ids, condition in (
        (pending, AccessRequestFeed.outcome == Outcome.pending.value),
        (review, AccessRequestFeed.review_required.is_(True)),
    ):
        if not feed_ids:
            continue
        result = await session.execute(
            update(AccessRequestFeed)
            .where(
                AccessRequestFeed.request_id == request_id,
                AccessRequestFeed.feed_id.in_(feed_ids),
                condition,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if rows_matched(result) != len(feed_ids):
            await session.rollback()
            raise Conflict("another decision on these feeds came first", code="already_decided")


async def approve(
    session: AsyncSession, principal: Principal, request_id: str, body: OwnerDecision
) -> AccessRequestOut:
    request, items, _ = await _load_visible_request(session, principal, request_id)
    chosen = _select_items(principal, items, body.feed_ids)
    now = utcnow()
    pending = [item for item in chosen if item.outcome == Outcome.pending.value]
    reviewed = [item for item in chosen if item.outcome != Outcome.pending.value]
    if pending and request.valid_until <= now:
        raise Conflict("the requested window has ended; nothing can be granted", code="window_over")
    events: list[AccessEvent] = []
    by_owner: dict[str, list[AccessRequestFeed]] = defaultdict(list)
    for item in pending:
        by_owner[item.owner_department or ""].append(item)
    for owner, owner_items in by_owner.items():
        decision = PolicyDecision(
            Outcome.granted,
            ReasonCode.approved_by_owner,
            body.comment or "approved by the owner",
            actions=frozenset(AccessAction(action) for action in request.actions),
            valid_from=max(request.valid_from, now),
            valid_until=request.valid_until,
        )
        grant = _grant_row(request, owner, decision, now)
        await session.execute(insert(Grant), [grant])
        await session.execute(
            insert(GrantFeed),
            [{"grant_id": grant["id"], "feed_id": item.feed_id} for item in owner_items],
        )
        await _claim(
            session,
            request.id,
            owner_items,
            {
                "outcome": Outcome.granted.value,
                "reason": ReasonCode.approved_by_owner.value,
                "message": decision.message,
                "decided_at": now,
                "decided_by": principal.subject,
                "grant_id": grant["id"],
            },
        )
        for item in owner_items:
            events.append(
                _decided_event(
                    request,
                    item,
                    principal,
                    Outcome.granted,
                    ReasonCode.approved_by_owner,
                    now,
                    str(grant["id"]),
                )
            )
            events.append(_grant_issued_event(request, item.feed_id, grant, principal.subject, now))
    if reviewed:
        await _claim(
            session,
            request.id,
            reviewed,
            {"review_required": False, "decided_by": principal.subject},
        )
        for item in reviewed:
            events.append(
                _decided_event(
                    request,
                    item,
                    principal,
                    Outcome.granted,
                    ReasonCode.emergency_confirmed,
                    now,
                    item.grant_id,
                )
            )
        await _finish_reviews(session, {item.grant_id for item in reviewed if item.grant_id})
    await record_access_events(session, events)
    await session.commit()
    return await get_access_request(session, principal, request_id)


async def _finish_reviews(session: AsyncSession, grant_ids: set[str]) -> None:
    """A grant leaves the review queue when none of its feeds waits for review any more."""
    for grant_id in grant_ids:
        still_waiting = await session.scalar(
            select(AccessRequestFeed.feed_id)
            .where(
                AccessRequestFeed.grant_id == grant_id, AccessRequestFeed.review_required.is_(True)
            )
            .limit(1)
        )
        if still_waiting is None:
            await session.execute(
                update(Grant).where(Grant.id == grant_id).values(review_required=False)
            )


def _decided_event(
    request: AccessRequest,
    item: AccessRequestFeed,
    principal: Principal,
    outcome: Outcome,
    reason: ReasonCode,
    now: datetime,
    grant_id: str | None,
) -> AccessEvent:
    return AccessEvent(
        EventType.ACCESS_DECIDED,
        _event_data(
            request,
            item.feed_id,
            item.owner_department,
            item.actions,
            decision=outcome.value,
            reason=reason.value,
            decided_at=now,
            grant_id=grant_id,
        ),
        principal.subject,
        occurred_at=now,
    )


async def deny(
    session: AsyncSession,
    principal: Principal,
    request_id: str,
    body: OwnerDecision,
    on_revoked: RevocationListener,
) -> AccessRequestOut:
    """Denies pending feeds; for emergency grants under review, revokes the grant."""
    request, items, _ = await _load_visible_request(session, principal, request_id)
    chosen = _select_items(principal, items, body.feed_ids)
    now = utcnow()
    message = body.comment or "denied by the owner"
    await _claim(
        session,
        request.id,
        chosen,
        {
            "outcome": Outcome.denied.value,
            "reason": ReasonCode.denied_by_owner.value,
            "message": message,
            "decided_at": now,
            "decided_by": principal.subject,
            "review_required": False,
        },
    )
    events = [
        _decided_event(
            request, item, principal, Outcome.denied, ReasonCode.denied_by_owner, now, item.grant_id
        )
        for item in chosen
    ]
    revoked: list[Grant] = []
    for grant_id in {item.grant_id for item in chosen if item.grant_id}:
        grant = await _revoke_row(
            session, grant_id, principal, f"emergency access refused on review: {message}", now
        )
        if grant is not None:
            revoked.append(grant)
            events.extend(await _revoked_events(session, grant, principal, now))
    await record_access_events(session, events)
    await session.commit()
    for grant in revoked:
        on_revoked(grant.id, grant.valid_until)
    return await get_access_request(session, principal, request_id)


# ------------------------------------------------------------------------------ grants


async def _grant_feed_ids(session: AsyncSession, grant_id: str) -> list[str]:
    return list(
        (
            await session.scalars(
                select(GrantFeed.feed_id)
                .where(GrantFeed.grant_id == grant_id)
                .order_by(GrantFeed.feed_id)
            )
        ).all()
    )


def _grant_out(grant: Grant, feed_ids: list[str]) -> GrantOut:
    return GrantOut(
        id=grant.id,
        request_id=grant.request_id,
        requester=grant.requester,
        requester_department=grant.requester_department,
        owner_department=grant.owner_department,
        feed_ids=feed_ids,
        actions=[AccessAction(action) for action in grant.actions],
        valid_from=grant.valid_from,
        valid_until=grant.valid_until,
        emergency=grant.emergency,
        review_required=grant.review_required,
        revoked_at=grant.revoked_at,
        revoked_by=grant.revoked_by,
        revoke_reason=grant.revoke_reason,
    )


def _may_see_grant(principal: Principal, grant: Grant) -> bool:
    return principal.department == grant.requester_department or reads_owner_side(
        principal, grant.owner_department
    )


async def _load_grant(session: AsyncSession, principal: Principal, grant_id: str) -> Grant:
    grant = await session.get(Grant, grant_id)
    if grant is None or not _may_see_grant(principal, grant):
        raise NotFound(f"no grant {grant_id!r}", code="unknown_grant")
    return grant


async def get_grant(session: AsyncSession, principal: Principal, grant_id: str) -> GrantOut:
    grant = await _load_grant(session, principal, grant_id)
    return _grant_out(grant, await _grant_feed_ids(session, grant.id))


async def list_grants(
    session: AsyncSession, principal: Principal, *, active_only: bool, as_owner: bool, limit: int
) -> list[GrantOut]:
    if principal.department is None and not principal.is_city_admin:
        raise Forbidden("this needs a department", code="department_required")
    if as_owner:
        _require_owner_side(principal, "the grants on your department's feeds")
    query = select(Grant)
    if not principal.is_city_admin:
        column = Grant.owner_department if as_owner else Grant.requester_department
        query = query.where(column == principal.department)
    if active_only:
        query = query.where(Grant.revoked_at.is_(None), Grant.valid_until > utcnow())
    grants = list(
        (await session.scalars(query.order_by(Grant.created_at.desc()).limit(limit))).all()
    )
    feeds: dict[str, list[str]] = defaultdict(list)
    if grants:
        rows = await session.execute(
            select(GrantFeed.grant_id, GrantFeed.feed_id)
            .where(GrantFeed.grant_id.in_([grant.id for grant in grants]))
            .order_by(GrantFeed.feed_id)
        )
        for grant_id, feed_id in rows:
            feeds[grant_id].append(feed_id)
    return [_grant_out(grant, feeds[grant.id]) for grant in grants]


def _may_revoke(principal: Principal, grant: Grant) -> bool:
    return (
        principal.administers(grant.owner_department)
        or principal.administers(grant.requester_department)
        or principal.subject == grant.requester
    )


async def _revoke_row(
    session: AsyncSession, grant_id: str, principal: Principal, reason: str, now: datetime
) -> Grant | None:
    result = await session.execute(
        update(Grant)
        .where(Grant.id == grant_id, Grant.revoked_at.is_(None))
        .values(
            revoked_at=now,
            revoked_by=principal.subject,
            revoke_reason=reason[:500],
            review_required=False,
        )
        .execution_options(synchronize_session=False)
    )
    if rows_matched(result) != 1:
        return None
    grant = await session.get(Grant, grant_id, populate_existing=True)
    return grant


async def _revoked_events(
    session: AsyncSession, grant: Grant, principal: Principal, now: datetime
) -> list[AccessEvent]:
    request = await session.get(AccessRequest, grant.request_id)
    assert request is not None
    return [
        AccessEvent(
            EventType.GRANT_REVOKED,
            _event_data(
                request,
                feed_id,
                grant.owner_department,
                grant.actions,
                decision="revoked",
                reason=grant.revoke_reason,
                grant_id=grant.id,
                decided_at=now,
                grant_valid_from=grant.valid_from,
                grant_valid_until=grant.valid_until,
                emergency=grant.emergency,
            ),
            principal.subject,
            occurred_at=now,
        )
        for feed_id in await _grant_feed_ids(session, grant.id)
    ]


async def revoke_grant(
    session: AsyncSession,
    principal: Principal,
    grant_id: str,
    reason: str,
    on_revoked: RevocationListener,
) -> GrantOut:
    grant = await _load_grant(session, principal, grant_id)
    if not _may_revoke(principal, grant):
        raise Forbidden(
            "only the owner's or the requester's dept_admin, or the requester, may revoke",
            code="not_allowed_to_revoke",
        )
    if grant.revoked_at is not None:
        raise Conflict("the grant is already revoked", code="already_revoked")
    now = utcnow()
    revoked = await _revoke_row(session, grant_id, principal, reason, now)
    if revoked is None:
        raise Conflict("the grant is already revoked", code="already_revoked")
    await record_access_events(session, await _revoked_events(session, revoked, principal, now))
    await session.commit()
    on_revoked(revoked.id, revoked.valid_until)
    return _grant_out(revoked, await _grant_feed_ids(session, revoked.id))


# ------------------------------------------------------------------------------ retrieval


async def retrieval(
    session: AsyncSession,
    settings: Settings,
    tokens: RetrievalTokens,
    principal: Principal,
    grant_id: str,
) -> RetrievalOut:
    """Tokens and URLs for each feed of the grant, only for the department it was granted to."""
    grant = await session.get(Grant, grant_id)
    if grant is None or principal.department != grant.requester_department:
        # The same answer for "does not exist" and "not yours": no grant ids are leaked.
        raise NotFound(f"no grant {grant_id!r} for your department", code="unknown_grant")
    if not principal.has_any(*REQUESTING_ROLES):
        raise Forbidden("retrieval needs the requester or dept_admin role", code="role_required")
    now = utcnow()
    if grant.revoked_at is not None:
        raise Gone(
            "the grant was revoked", code="grant_revoked", details={"reason": grant.revoke_reason}
        )
    if grant.valid_until <= now:
        raise Gone("the grant has ended", code="grant_expired")
    feed_ids = await _grant_feed_ids(session, grant.id)
    facts = await load_feed_facts(session, feed_ids)
    feeds = []
    for feed_id in feed_ids:
        feed = facts.get(feed_id)
        if feed is None or feed.retired_at is not None:
            continue
        path = gateway_path(settings.media_gateway_app, feed.media_path)
        minted = tokens.mint(
            subject=principal.subject,
            department=grant.requester_department,
            grant_id=grant.id,
            feed_id=feed_id,
            actions=grant.actions,
            media_path=path,
            grant_valid_from=grant.valid_from,
            grant_valid_until=grant.valid_until,
            now=now,
        )
        feeds.append(
            FeedRetrieval(
                feed_id=feed_id,
                protocol=feed.stream_protocol,
                media_path=path,
                token=minted.token,
                compact_token=minted.compact,
                token_id=minted.claims.token_id,
                expires_at=minted.expires_at,
                urls=retrieval_urls(
                    settings,
                    feed_kind=feed.kind,
                    feed_protocol=feed.stream_protocol,
                    path=path,
                    token=minted.token,
                    compact_token=minted.compact,
                ),
            )
        )
    return RetrievalOut(
        grant_id=grant.id, actions=[AccessAction(action) for action in grant.actions], feeds=feeds
    )
