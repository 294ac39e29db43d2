"""Deciding a group of suspected duplicates: "one number, one source".

An admin of one of the group's departments, or the city admin, either resolves the group by
naming the authoritative feed (the one source the city uses) or dismisses it (not the same
device). A decision is written once with who, when, why and the members it covered, never
changed, and listed at ``GET /v1/catalog/duplicates/decisions``: the audit trail. The duplicate
report then leaves that group out; a group that gains or loses a member has another key and
is listed again.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.catalog.models import DuplicateDecision
from registry_api.errors import Conflict, Forbidden, NotFound, Unprocessable
from registry_api.feeds import duplicates
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.principal import Principal
from schemas.events import utcnow

log = logging.getLogger("feedgrid.catalog.duplicates")
decisions = cast(Table, DuplicateDecision.__table__)
FIELDS = (
    "group_key", "reason", "decision", "authoritative_feed_id", "feed_ids", "note",
    "decided_by", "decided_department", "decided_at",
)  # fmt: skip


async def decided_keys(session: AsyncSession) -> frozenset[str]:
    return frozenset((await session.execute(select(DuplicateDecision.group_key))).scalars())


async def _current_group(
    session: AsyncSession, index: FeedIndex, principal: Principal, key: str
) -> dict[str, Any]:
    reason = key.split(":", 1)[0]
    if reason not in duplicates.REASONS:
        raise NotFound(f"no duplicate group {key!r}", code="duplicate_group_not_found")
    report = await duplicates.find_duplicates(
        session, index, principal, reason=reason, limit=1_000_000
    )
    for group in report["groups"]:
        if group["key"] == key:
            return group  # type: ignore[no-any-return]
    raise NotFound(
        f"no current duplicate group {key!r} (its members may have changed: list them again)",
        code="duplicate_group_not_found",
    )


async def decide_group(
    session: AsyncSession,
    index: FeedIndex,
    principal: Principal,
    *,
    key: str,
    decision: str,
    authoritative_feed_id: str | None,
    note: str | None,
) -> dict[str, Any]:
    group = await _current_group(session, index, principal, key)
    if not any(principal.administers(department) for department in group["departments"]):
        raise Forbidden(
            "only an admin of one of the group's departments (or the city admin) decides it",
            code="not_group_admin",
        )
    members = [member["id"] for member in group["feeds"]]
    if decision == "resolved":
        if authoritative_feed_id not in members:
            raise Unprocessable(
                "name the authoritative feed: one of " + ", ".join(members),
                code="authoritative_feed_not_in_group",
            )
    elif authoritative_feed_id is not None:
        raise Unprocessable(
            "a dismissed group has no authoritative feed", code="authoritative_feed_not_allowed"
        )
    row = {
        "group_key": key,
        "reason": group["reason"],
        "decision": decision,
        "authoritative_feed_id": authoritative_feed_id,
        "feed_ids": members,
        "note": note,
        "decided_by": principal.subject,
        "decided_department": principal.department,
        "decided_at": utcnow(),
    }
    try:
        await session.execute(insert(decisions), [row])
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"group {key} is already decided", code="duplicate_group_decided") from None
    log.info(
        "duplicate group decided",
        extra={key_: row[key_] for key_ in ("group_key", "decision", "decided_by")},
    )
    return row


async def list_decisions(
    session: AsyncSession, principal: Principal, *, limit: int
) -> list[dict[str, Any]]:
    """Decisions newest first: a department sees the ones its department made or that name
    one of its feeds; the city admin all. (Filtered here: decisions are few.)"""
    statement = select(decisions).order_by(decisions.c.id.desc())
    rows = (await session.execute(statement)).mappings().all()
    if principal.is_city_admin:
        chosen = rows[:limit]
    else:
        from registry_api.feeds.models import feeds_table

        own: set[str] = set()
        mentioned = sorted({feed_id for row in rows for feed_id in row["feed_ids"]})
        for begin in range(0, len(mentioned), 4_000):
            chunk = mentioned[begin : begin + 4_000]
            found = await session.execute(
                select(feeds_table.c.id).where(
                    feeds_table.c.id.in_(chunk), feeds_table.c.owner == principal.department
                )
            )
            own.update(found.scalars())
        chosen = [
            row
            for row in rows
            if row["decided_department"] == principal.department
            or own.intersection(row["feed_ids"])
        ][:limit]
    return [{name: row[name] for name in FIELDS} for row in chosen]
