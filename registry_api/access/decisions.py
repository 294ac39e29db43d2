"""The owner's decisions on pending feeds: approve (a grant each) or deny; reviews of emergency
grants close with them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.grants import (
    RevocationListener,
    grant_feed_ids,
    revoke_row,
    revoked_events,
)
from registry_api.access.inbox import get_access_request, load_visible_request
from registry_api.access.models import AccessRequestFeed, Grant
from registry_api.access.policy import PolicyDecision
from registry_api.access.records import TABLES, EventPayloads, grant_row
from registry_api.audit.service import EncodedAccessEvent, RecordedEvent, record_access_events
from registry_api.bulk_insert import prepare_insert
from registry_api.db import rows_matched, writes_in_turn
from registry_api.driver_work import execute_insert
from registry_api.errors import Conflict, Forbidden, NotFound
from registry_api.identity.principal import Principal
from schemas.access import (
    AccessAction,
    AccessRequestOut,
    Outcome,
    OwnerDecision,
    ReasonCode,
)
from schemas.events import EventType, utcnow
from schemas.identity import Role


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
    items = TABLES.request_feeds.c
    for feed_ids, condition in (
        (pending, items.outcome == Outcome.pending.value),
        (review, items.review_required.is_(True)),
    ):
        if not feed_ids:
            continue
        result = await session.execute(
            update(TABLES.request_feeds)
            .where(items.request_id == request_id, items.feed_id.in_(feed_ids), condition)
            .values(**values)
        )
        if rows_matched(result) != len(feed_ids):
            await session.rollback()
            raise Conflict("another decision on these feeds came first", code="already_decided")


async def approve(
    session: AsyncSession, principal: Principal, request_id: str, body: OwnerDecision
) -> AccessRequestOut:
    request, items, _ = await load_visible_request(session, principal, request_id)
    chosen = _select_items(principal, items, body.feed_ids)
    now = utcnow()
    pending = [item for item in chosen if item.outcome == Outcome.pending.value]
    reviewed = [item for item in chosen if item.outcome != Outcome.pending.value]
    if pending and request.valid_until <= now:
        raise Conflict("the requested window has ended; nothing can be granted", code="window_over")
    payloads = EventPayloads(request)
    async with writes_in_turn(session, "approval"):
        events = await _grant_pending(session, payloads, principal, pending, body.comment, now)
        if reviewed:
            events += await _confirm_reviewed(session, payloads, principal, reviewed, now)
        await record_access_events(session, events)
        await session.commit()
    return await get_access_request(session, principal, request_id)


async def _grant_pending(
    session: AsyncSession,
    payloads: EventPayloads,
    principal: Principal,
    pending: Sequence[AccessRequestFeed],
    comment: str | None,
    now: datetime,
) -> list[EncodedAccessEvent]:
    """A grant per owner department for its approved feeds; their decided and issued events."""
    request = payloads.request
    by_owner: dict[str, list[AccessRequestFeed]] = defaultdict(list)
    for item in pending:
        by_owner[item.owner_department or ""].append(item)
    dialect = (await session.connection()).dialect
    events: list[EncodedAccessEvent] = []
    for owner, owner_items in by_owner.items():
        decision = PolicyDecision(
            Outcome.granted,
            ReasonCode.approved_by_owner,
            comment or "approved by the owner",
            actions=frozenset(AccessAction(action) for action in request.actions),
            valid_from=max(request.valid_from, now),
            valid_until=request.valid_until,
        )
        grant = grant_row(request, owner, decision, now)
        await execute_insert(session, prepare_insert(TABLES.grants, [grant], dialect))
        grant_feeds = [{"grant_id": grant["id"], "feed_id": item.feed_id} for item in owner_items]
        await execute_insert(session, prepare_insert(TABLES.grant_feeds, grant_feeds, dialect))
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
        grant_id = str(grant["id"])
        for item in owner_items:
            events.append(
                _decided_event(
                    payloads, item, principal, Outcome.granted, ReasonCode.approved_by_owner,
                    now, grant_id,
                )
            )  # fmt: skip
            events.append(payloads.grant_issued(item.feed_id, grant, principal.subject, now))
    return events


async def _confirm_reviewed(
    session: AsyncSession,
    payloads: EventPayloads,
    principal: Principal,
    reviewed: Sequence[AccessRequestFeed],
    now: datetime,
) -> list[EncodedAccessEvent]:
    """Emergency grants the owner confirms: off the review queue, a decided event each."""
    await _claim(
        session,
        payloads.request.id,
        reviewed,
        {"review_required": False, "decided_by": principal.subject},
    )
    await _finish_reviews(session, {item.grant_id for item in reviewed if item.grant_id})
    return [
        _decided_event(
            payloads, item, principal, Outcome.granted, ReasonCode.emergency_confirmed, now,
            item.grant_id,
        )
        for item in reviewed
    ]  # fmt: skip


async def _finish_reviews(session: AsyncSession, grant_ids: set[str]) -> None:
    """A grant leaves the review queue when none of its feeds waits for review any more."""
    if not grant_ids:
        return
    items = TABLES.request_feeds.c
    still_waiting = set(
        (
            await session.scalars(
                select(items.grant_id)
                .where(items.grant_id.in_(grant_ids), items.review_required.is_(True))
                .distinct()
            )
        ).all()
    )
    finished = grant_ids - still_waiting
    if finished:
        await session.execute(
            update(TABLES.grants)
            .where(TABLES.grants.c.id.in_(finished))
            .values(review_required=False)
        )


def _decided_event(
    payloads: EventPayloads,
    item: AccessRequestFeed,
    principal: Principal,
    outcome: Outcome,
    reason: ReasonCode,
    now: datetime,
    grant_id: str | None,
) -> EncodedAccessEvent:
    return payloads.event(
        EventType.ACCESS_DECIDED,
        item.feed_id,
        item.owner_department,
        item.actions,
        principal.subject,
        now,
        decision=outcome.value,
        reason=reason.value,
        decided_at=now,
        grant_id=grant_id,
    )


async def deny(
    session: AsyncSession,
    principal: Principal,
    request_id: str,
    body: OwnerDecision,
    on_revoked: RevocationListener,
) -> AccessRequestOut:
    """Denies pending feeds; for emergency grants under review, revokes the grant."""
    request, items, _ = await load_visible_request(session, principal, request_id)
    chosen = _select_items(principal, items, body.feed_ids)
    now = utcnow()
    message = body.comment or "denied by the owner"
    async with writes_in_turn(session, "denial"):
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
        payloads = EventPayloads(request)
        events: list[RecordedEvent] = [
            _decided_event(
                payloads,
                item,
                principal,
                Outcome.denied,
                ReasonCode.denied_by_owner,
                now,
                item.grant_id,
            )
            for item in chosen
        ]
        revoked: list[Grant] = []
        for grant_id in {item.grant_id for item in chosen if item.grant_id}:
            grant = await revoke_row(
                session, grant_id, principal, f"emergency access refused on review: {message}", now
            )
            if grant is not None:
                revoked.append(grant)
                feed_ids = await grant_feed_ids(session, grant.id)
                events.extend(revoked_events(payloads, grant, feed_ids, principal, now))
        await record_access_events(session, events)
        await session.commit()
    for grant in revoked:
        on_revoked(grant.id, grant.valid_until)
    return await get_access_request(session, principal, request_id)
