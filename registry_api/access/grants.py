"""Grants: reading them, revoking them (the media servers and this process are told), and the
retrieval token and URLs of a grant's feed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.feed_views import gateway_path, load_feed_facts
from registry_api.access.models import AccessRequest, Grant, GrantFeed
from registry_api.access.records import TABLES, EventPayloads
from registry_api.access.requests import REQUESTING_ROLES
from registry_api.access.retrieval import retrieval_urls
from registry_api.access.visibility import may_see_grant, require_owner_side
from registry_api.audit.service import EncodedAccessEvent, prepared_appending
from registry_api.driver_work import DriverCalls, DriverStatement, commit_in_turn, update_statement
from registry_api.errors import ApiError, Conflict, Forbidden, NotFound
from registry_api.identity.principal import Principal
from registry_api.tokens.service import RetrievalTokens
from schemas.access import (
    AccessAction,
    FeedRetrieval,
    GrantOut,
    RetrievalOut,
)
from schemas.events import EventType, utcnow
from schemas.settings import Settings

# Told of each revocation right after it commits: the in-memory revocation set of this process.
RevocationListener = Callable[[str, datetime], None]


class Gone(ApiError):
    status_code = 410
    code = "gone"


async def grant_feed_ids(session: AsyncSession, grant_id: str) -> list[str]:
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


async def _load_grant(session: AsyncSession, principal: Principal, grant_id: str) -> Grant:
    grant = await session.get(Grant, grant_id)
    if grant is None or not may_see_grant(principal, grant):
        raise NotFound(f"no grant {grant_id!r}", code="unknown_grant")
    return grant


async def get_grant(session: AsyncSession, principal: Principal, grant_id: str) -> GrantOut:
    grant = await _load_grant(session, principal, grant_id)
    return _grant_out(grant, await grant_feed_ids(session, grant.id))


async def list_grants(
    session: AsyncSession, principal: Principal, *, active_only: bool, as_owner: bool, limit: int
) -> list[GrantOut]:
    if principal.department is None and not principal.is_city_admin:
        raise Forbidden("this needs a department", code="department_required")
    if as_owner:
        require_owner_side(principal, "the grants on your department's feeds")
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


REVOKE_REASON_CHARS = 500


@dataclass(frozen=True)
class PreparedRevocation:
    """A grant's revocation made ready before the turn to write: the guarded UPDATE (it takes
    the grant only if it is still in force, returning its id) and the grant.revoked events."""

    grant: Grant
    feed_ids: list[str]
    values: dict[str, object]  # what the UPDATE sets
    statement: DriverStatement
    events: list[EncodedAccessEvent]

    def revoked_in(self, calls: DriverCalls) -> bool:
        """Runs the UPDATE in the turn: False when the grant was revoked meanwhile."""
        return bool(calls.execute(self.statement))

    def out(self) -> GrantOut:
        """The grant as it is once the revocation is committed."""
        return _grant_out(self.grant, self.feed_ids).model_copy(update=self.values)


async def prepare_revocation(
    session: AsyncSession,
    grant: Grant,
    payloads: EventPayloads,
    principal: Principal,
    reason: str,
    now: datetime,
) -> PreparedRevocation:
    """Reads what revoking ``grant`` (of the request of ``payloads``) writes and tells."""
    reason = reason[:REVOKE_REASON_CHARS]
    values: dict[str, object] = {
        "revoked_at": now,
        "revoked_by": principal.subject,
        "revoke_reason": reason,
        "review_required": False,
    }
    statement = update_statement(
        TABLES.grants,
        values,
        (await session.connection()).dialect,
        where={"id": grant.id, "revoked_at": None},
        returning=("id",),
    )
    feed_ids = await grant_feed_ids(session, grant.id)
    events = revoked_events(payloads, grant, feed_ids, principal, reason, now)
    return PreparedRevocation(grant, feed_ids, values, statement, events)


def revoked_events(
    payloads: EventPayloads,
    grant: Grant,
    feed_ids: list[str],
    principal: Principal,
    reason: str,
    now: datetime,
) -> list[EncodedAccessEvent]:
    """A grant.revoked event for each feed of the grant (``payloads`` of its request)."""
    return [
        payloads.event(
            EventType.GRANT_REVOKED,
            feed_id,
            grant.owner_department,
            grant.actions,
            principal.subject,
            now,
            decision="revoked",
            reason=reason,
            grant_id=grant.id,
            decided_at=now,
            grant_valid_from=grant.valid_from,
            grant_valid_until=grant.valid_until,
            emergency=grant.emergency,
        )
        for feed_id in feed_ids
    ]


async def revoke_grant(
    session: AsyncSession,
    principal: Principal,
    grant_id: str,
    reason: str,
    on_revoked: RevocationListener,
) -> GrantOut:
    """Revokes a grant in force. Everything is read and prepared before the turn to write,
    which holds the guarded UPDATE, the audit links and the outbox rows (as an owner's
    decision does)."""
    grant = await _load_grant(session, principal, grant_id)
    if not _may_revoke(principal, grant):
        raise Forbidden(
            "only the owner's or the requester's dept_admin, or the requester, may revoke",
            code="not_allowed_to_revoke",
        )
    if grant.revoked_at is not None:
        raise Conflict("the grant is already revoked", code="already_revoked")
    now = utcnow()
    request = await session.get(AccessRequest, grant.request_id)
    assert request is not None
    revocation = await prepare_revocation(
        session, grant, EventPayloads(request), principal, reason, now
    )
    dialect = (await session.connection()).dialect
    append = await prepared_appending(session, revocation.events, now, dialect, compress=True)

    def write(calls: DriverCalls) -> None:
        if not revocation.revoked_in(calls):
            raise Conflict("the grant is already revoked", code="already_revoked")
        append(calls)

    await commit_in_turn(session, "revocation", write)
    on_revoked(grant.id, grant.valid_until)
    return revocation.out()


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
    feed_ids = await grant_feed_ids(session, grant.id)
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
