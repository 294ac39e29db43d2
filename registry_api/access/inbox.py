"""Reading access requests: the requester department's own list, the owner's inbox (pending
requests, emergency grants to review) and single requests, each showing what the caller may see."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.models import AccessRequest, AccessRequestFeed
from registry_api.access.requests import load_request, request_out
from registry_api.access.visibility import require_owner_side, visible_items
from registry_api.errors import Forbidden, NotFound
from registry_api.identity.principal import Principal
from schemas.access import (
    AccessRequestOut,
)

REVIEW = "review"


async def load_visible_request(
    session: AsyncSession, principal: Principal, request_id: str
) -> tuple[AccessRequest, list[AccessRequestFeed], list[AccessRequestFeed]]:
    """The request, its items and those the caller may see; a request the caller may not see
    is answered exactly as one that does not exist."""
    request, items = await load_request(session, request_id)
    visible = visible_items(principal, request, items)
    if visible is None:
        raise NotFound(f"no access request {request_id!r}", code="unknown_access_request")
    return request, items, visible


async def get_access_request(
    session: AsyncSession, principal: Principal, request_id: str
) -> AccessRequestOut:
    request, _, visible = await load_visible_request(session, principal, request_id)
    return request_out(request, visible)


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
        require_owner_side(principal, "the owner's inbox")
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
    return [request_out(request, by_request[request.id]) for request in requests]
