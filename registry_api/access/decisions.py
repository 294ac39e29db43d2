"""The owner's decisions on pending feeds: approve (a grant each) or deny; reviews of emergency
grants close with them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.grants import RevocationListener, prepare_revocation
from registry_api.access.inbox import load_visible_request
from registry_api.access.models import AccessRequest, AccessRequestFeed, Grant
from registry_api.access.policy import PolicyDecision
from registry_api.access.records import TABLES, EventPayloads, grant_row
from registry_api.access.requests import item_values, request_out
from registry_api.audit.service import EncodedAccessEvent, prepared_appending
from registry_api.bulk_insert import DriverInsert, bound_value, placeholder, prepare_insert
from registry_api.driver_work import (
    DriverCalls,
    DriverStatement,
    commit_in_turn,
    update_statement,
)
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
        if chosen:
            return chosen
        if any(principal.administers(item.owner_department or "") for item in items):
            # decided before this answer was read: what a claim that came second answers
            raise Conflict(
                "every feed of yours in this request is already decided", code="already_decided"
            )
        raise Conflict("nothing in this request waits for your decision", code="nothing_to_decide")
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


# Feeds per claiming UPDATE: within the 999 variables a statement may bind on the oldest
# SQLite builds.
CLAIM_CHUNK = 500
Claims = list[tuple[DriverStatement, int]]
# What a decision wrote over the feeds it claimed: each claimed item's new column values.
Written = dict[str, Mapping[str, object]]


def _claims(
    request_id: str,
    chosen: Sequence[AccessRequestFeed],
    values: dict[str, object],
    dialect: Dialect,
) -> Claims:
    """UPDATEs that take the chosen items only if still undecided, each with how many rows it
    must take: two concurrent decisions never both win (see :func:`_claim`)."""
    pending = [item.feed_id for item in chosen if item.outcome == Outcome.pending.value]
    review = [item.feed_id for item in chosen if item.outcome != Outcome.pending.value]
    claims: Claims = []
    for feed_ids, condition in (
        (pending, {"outcome": Outcome.pending.value}),
        (review, {"review_required": True}),
    ):
        for begin in range(0, len(feed_ids), CLAIM_CHUNK):
            chunk = feed_ids[begin : begin + CLAIM_CHUNK]
            statement = update_statement(
                TABLES.request_feeds,
                values,
                dialect,
                where={"request_id": request_id, **condition},
                within=("feed_id", chunk),
                returning=("feed_id",),
                unindexed=condition.keys(),
            )
            claims.append((statement, len(chunk)))
    return claims


def _claim(calls: DriverCalls, claims: Claims) -> None:
    for statement, wanted in claims:
        if len(calls.execute(statement)) != wanted:
            raise Conflict("another decision on these feeds came first", code="already_decided")


async def approve(
    session: AsyncSession, principal: Principal, request_id: str, body: OwnerDecision
) -> AccessRequestOut:
    request, items, visible = await load_visible_request(session, principal, request_id)
    chosen = _select_items(principal, items, body.feed_ids)
    now = utcnow()
    pending = [item for item in chosen if item.outcome == Outcome.pending.value]
    reviewed = [item for item in chosen if item.outcome != Outcome.pending.value]
    if pending and request.valid_until <= now:
        raise Conflict("the requested window has ended; nothing can be granted", code="window_over")
    payloads = EventPayloads(request)
    # As an access request (requests.py): everything but the driver's work is prepared before
    # the turn to write, which then holds one call on the connection's thread (SQLite).
    dialect = (await session.connection()).dialect
    written: Written = {}
    inserts, claims, events = _granting(
        payloads, principal, pending, body.comment, now, dialect, written
    )
    finishing = None
    if reviewed:
        values: dict[str, object] = {"review_required": False, "decided_by": principal.subject}
        claims += _claims(request.id, reviewed, values, dialect)
        written.update(dict.fromkeys((item.feed_id for item in reviewed), values))
        finishing = _finishing_reviews(
            {item.grant_id for item in reviewed if item.grant_id}, dialect
        )
        events += [
            _decided_event(
                payloads, item, principal, Outcome.granted, ReasonCode.emergency_confirmed, now,
                item.grant_id,
            )
            for item in reviewed
        ]  # fmt: skip
    append = await prepared_appending(session, events, now, dialect, compress=True)

    def write(calls: DriverCalls) -> None:
        for insert in inserts:
            calls.executemany(insert)
        _claim(calls, claims)
        if finishing is not None:
            calls.execute(finishing)
        append(calls)

    await commit_in_turn(session, "approval", write)
    return _decided(request, visible, written)


def _decided(
    request: AccessRequest, visible: Sequence[AccessRequestFeed], written: Written
) -> AccessRequestOut:
    """The request as the decision left it, without reading it again: the items the caller may
    see as read before the turn, with what the decision wrote over those it claimed (each
    claim took its item only if it was still undecided, so nothing else changed them)."""
    return request_out(
        request, [{**item_values(item), **written.get(item.feed_id, {})} for item in visible]
    )


def _granting(
    payloads: EventPayloads,
    principal: Principal,
    pending: Sequence[AccessRequestFeed],
    comment: str | None,
    now: datetime,
    dialect: Dialect,
    written: Written,
) -> tuple[list[DriverInsert], Claims, list[EncodedAccessEvent]]:
    """A grant per owner department for its approved feeds (its row and its feeds' rows), the
    claims of those feeds (their new values also in ``written``), and their decided and
    issued events."""
    request = payloads.request
    by_owner: dict[str, list[AccessRequestFeed]] = defaultdict(list)
    for item in pending:
        by_owner[item.owner_department or ""].append(item)
    grants: list[dict[str, object]] = []
    grant_feeds: list[dict[str, object]] = []
    claims: Claims = []
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
        grants.append(grant)
        grant_feeds += [{"grant_id": grant["id"], "feed_id": item.feed_id} for item in owner_items]
        values: dict[str, object] = {
            "outcome": Outcome.granted.value,
            "reason": ReasonCode.approved_by_owner.value,
            "message": decision.message,
            "decided_at": now,
            "decided_by": principal.subject,
            "grant_id": grant["id"],
        }
        claims += _claims(request.id, owner_items, values, dialect)
        written.update(dict.fromkeys((item.feed_id for item in owner_items), values))
        grant_id = str(grant["id"])
        for item in owner_items:
            events.append(
                _decided_event(
                    payloads, item, principal, Outcome.granted, ReasonCode.approved_by_owner,
                    now, grant_id,
                )
            )  # fmt: skip
            events.append(payloads.grant_issued(item.feed_id, grant, principal.subject, now))
    inserts = (
        [
            prepare_insert(TABLES.grants, grants, dialect),
            prepare_insert(TABLES.grant_feeds, grant_feeds, dialect),
        ]
        if grants
        else []
    )
    return inserts, claims, events


def _finishing_reviews(grant_ids: set[str], dialect: Dialect) -> DriverStatement | None:
    """A grant leaves the review queue when none of its feeds waits for review any more."""
    if not grant_ids:
        return None
    quote, style = dialect.identifier_preparer.quote, dialect.paramstyle
    grants = dialect.identifier_preparer.format_table(TABLES.grants)
    items = dialect.identifier_preparer.format_table(TABLES.request_feeds)
    listed = sorted(grant_ids)
    ids = ", ".join(placeholder(style, position) for position in range(2, len(listed) + 2))
    sql = (
        f"UPDATE {grants} SET {quote('review_required')} = {placeholder(style, 1)} "
        f"WHERE {quote('id')} IN ({ids}) AND NOT EXISTS (SELECT 1 FROM {items} "
        f"WHERE {items}.{quote('grant_id')} = {grants}.{quote('id')} "
        f"AND {items}.{quote('review_required')} = {placeholder(style, len(listed) + 2)})"
    )
    unset = bound_value(TABLES.grants, "review_required", False, dialect)
    waiting = bound_value(TABLES.request_feeds, "review_required", True, dialect)
    return DriverStatement(sql, (unset, *listed, waiting))


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


# A denial prepared anew when an emergency grant it revokes was revoked by someone else
# between its read and its turn: how many times before it answers 409.
DENIAL_ATTEMPTS = 3


class _RevokedMeanwhile(Exception):
    """A grant the denial would revoke was revoked between the denial's read and its turn."""


async def deny(
    session: AsyncSession,
    principal: Principal,
    request_id: str,
    body: OwnerDecision,
    on_revoked: RevocationListener,
) -> AccessRequestOut:
    """Denies pending feeds; for emergency grants under review, revokes the grant.

    As an approval, everything is read and prepared before the turn to write, which holds
    the claims, the revocations, the audit links and the outbox rows as one piece of driver
    work. A grant revoked by someone else in between (its guarded UPDATE takes no row) makes
    the denial start again from a fresh read, so a revocation is never told twice."""
    for _ in range(DENIAL_ATTEMPTS):
        try:
            revoked, answer = await _deny_once(session, principal, request_id, body)
        except _RevokedMeanwhile:
            await session.rollback()
            continue
        for grant in revoked:
            on_revoked(grant.id, grant.valid_until)
        return answer
    raise Conflict(
        "the emergency grants of these feeds kept changing; try again", code="already_decided"
    )


async def _deny_once(
    session: AsyncSession, principal: Principal, request_id: str, body: OwnerDecision
) -> tuple[list[Grant], AccessRequestOut]:
    """One attempt of :func:`deny`; returns the grants it revoked and the request as it left
    it."""
    request, items, visible = await load_visible_request(session, principal, request_id)
    chosen = _select_items(principal, items, body.feed_ids)
    now = utcnow()
    message = body.comment or "denied by the owner"
    values: dict[str, object] = {
        "outcome": Outcome.denied.value,
        "reason": ReasonCode.denied_by_owner.value,
        "message": message,
        "decided_at": now,
        "decided_by": principal.subject,
        "review_required": False,
    }
    dialect = (await session.connection()).dialect
    claims = _claims(request.id, chosen, values, dialect)
    payloads = EventPayloads(request)
    events: list[EncodedAccessEvent] = [
        _decided_event(
            payloads, item, principal, Outcome.denied, ReasonCode.denied_by_owner, now,
            item.grant_id,
        )
        for item in chosen
    ]  # fmt: skip
    grant_ids = sorted({item.grant_id for item in chosen if item.grant_id})
    revocations = []
    for grant in await _grants_in_force(session, grant_ids):
        revocation = await prepare_revocation(
            session, grant, payloads, principal,
            f"emergency access refused on review: {message}", now,
        )  # fmt: skip
        revocations.append(revocation)
        events += revocation.events
    append = await prepared_appending(session, events, now, dialect, compress=True)

    def write(calls: DriverCalls) -> None:
        _claim(calls, claims)
        for revocation in revocations:
            if not revocation.revoked_in(calls):
                raise _RevokedMeanwhile(revocation.grant.id)
        append(calls)

    await commit_in_turn(session, "denial", write)
    written: Written = dict.fromkeys((item.feed_id for item in chosen), values)
    return [revocation.grant for revocation in revocations], _decided(request, visible, written)


async def _grants_in_force(session: AsyncSession, grant_ids: Sequence[str]) -> list[Grant]:
    """The grants among ``grant_ids`` not revoked yet, in id order."""
    if not grant_ids:
        return []
    statement = (
        select(Grant).where(Grant.id.in_(grant_ids), Grant.revoked_at.is_(None)).order_by(Grant.id)
    )
    return list((await session.scalars(statement)).all())
