"""Registering, reading, changing and retiring feeds: plain functions over a session.

Every write commits the feed row and its feed-metadata event in one transaction, then makes
the change visible in this process's index. Callers notify the outbox relay after the call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.db import rows_matched
from registry_api.errors import (
    ApiError,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from registry_api.feeds import sqlite_rows as sqlite_fast
from registry_api.feeds.documents import (
    can_see_internal,
    content_values,
    feed_document,
    input_document,
    new_feed_id,
)
from registry_api.feeds.events import outbox_row
from registry_api.feeds.index.queries import IndexQuery, InvalidCursor
from registry_api.feeds.index.records import FeedRecord
from registry_api.feeds.models import feeds_table
from registry_api.feeds.problems import first_problem, validation_details
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.models import Department
from registry_api.identity.principal import Principal
from registry_api.outbox.service import enqueue_many
from schemas.events import EventType, utcnow
from schemas.feeds import (
    FeedCreate,
    FeedFeature,
    FeedFilters,
    FeedProperties,
    FeedSearch,
    PointGeometry,
)

feeds = feeds_table
IMMUTABLE_FIELDS = ("kind", "owner", "code")
PAGE_LIMIT_DEFAULT = 100


# ---------------------------------------------------------------------------- helpers


def unprocessable(error: ValidationError, code: str) -> Unprocessable:
    details = validation_details(error)
    return Unprocessable(first_problem(details), code=code, details=details)


def split_body(body: FeedCreate | FeedFeature) -> tuple[FeedProperties, PointGeometry | None]:
    if isinstance(body, FeedFeature):
        return body.properties, body.geometry
    return body, body.location


def require_feed_admin(principal: Principal, owner: str) -> None:
    if not principal.administers(owner):
        raise Forbidden(
            f"only the admins of department {owner!r} (or the city admin) may change its feeds",
            code="not_feed_admin",
        )


def media_path_problem(owner: str, media_path: str) -> str | None:
    """Why a feed may not use this gateway path, or None. The gateway serves one stream per
    path: a path outside the owner's space could be another department's feed, which this
    department's grants would then open."""
    if media_path.startswith(f"{owner}/"):
        return None
    return f"the media path must lie under the owner's code: '{owner}/...'"


def require_media_path_of_owner(owner: str, media_path: str) -> None:
    problem = media_path_problem(owner, media_path)
    if problem is not None:
        raise Unprocessable(problem, code="media_path_outside_owner")


async def require_department(session: AsyncSession, code: str) -> None:
    if await session.get(Department, code) is None:
        raise Unprocessable(f"department {code!r} does not exist", code="unknown_department")


async def load_row(
    session: AsyncSession, feed_id: str, *, for_update: bool = False
) -> Mapping[Any, Any]:
    statement = select(feeds).where(feeds.c.id == feed_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).mappings().first()
    if row is None:
        raise NotFound(f"feed {feed_id!r} does not exist", code="feed_not_found")
    return row


VERSION_TEXT = re.compile(r"[0-9]{1,18}")
DIGEST_TEXT = re.compile(r"(?:[0-9a-f]{16})?")


def parse_if_match(value: str | None, *, required: bool) -> int | None:
    """``If-Match: 3``, ``"3"``, ``W/"3"`` or an ETag of GET (``"3.<digest>"``) -> 3."""
    if value is None or not value.strip():
        if required:
            raise ApiError(
                "send If-Match: <version> (from the ETag of GET) to change a feed",
                status_code=428,
                code="precondition_required",
            )
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    version, _, digest = text.partition(".")
    # ASCII digits only (str.isdigit() takes "²", which int() refuses), and few enough of them
    # for a signed 64-bit column: any other version is one no feed has.
    if not VERSION_TEXT.fullmatch(version) or not DIGEST_TEXT.fullmatch(digest):
        raise PreconditionFailed(
            f"If-Match must be a feed version, got {value!r}", code="bad_if_match"
        )
    return int(version)


def etag(version: int, body: bytes | None = None) -> str:
    """The feed's version, and with ``body`` a digest of the document as sent: ``If-Match``
    compares the version only (status and ``last_seen`` change without a new version, and an
    editor's precondition stays valid through them), ``If-None-Match`` the whole tag (a 304
    only when the caller would get the very same bytes)."""
    if body is None:
        return f'"{version}"'
    return f'"{version}.{hashlib.blake2b(body, digest_size=8).hexdigest()}"'


def none_match(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (or is ``*``): the client's copy is current."""
    if not if_none_match:
        return False
    candidates = [candidate.strip() for candidate in if_none_match.split(",")]
    return "*" in candidates or any(candidate.removeprefix("W/") == tag for candidate in candidates)


def record_of(row: Mapping[Any, Any]) -> FeedRecord:
    return FeedRecord.from_row(row)


async def duplicate_hints(
    session: AsyncSession, owner: str, code: str, url_key: str
) -> list[dict[str, Any]]:
    """Live feeds of other departments with the same code or the same stream."""
    statement = select(feeds.c.id, feeds.c.owner, feeds.c.code, feeds.c.stream_url_key).where(
        feeds.c.owner != owner,
        feeds.c.retired_at.is_(None),
        (feeds.c.code == code) | (feeds.c.stream_url_key == url_key),
    )
    hints = []
    for row in (await session.execute(statement)).all():
        reasons = []
        if row.code == code:
            reasons.append("same_code")
        if row.stream_url_key == url_key:
            reasons.append("same_stream_url")
        hints.append({"feed_id": row.id, "owner": row.owner, "reasons": reasons})
    return hints


# ---------------------------------------------------------------------------- writes


async def register_feed(
    session: AsyncSession, index: FeedIndex, principal: Principal, body: FeedCreate | FeedFeature
) -> dict[str, Any]:
    """Stores a new feed and its ``feed.registered`` event; 409 if (owner, code) is taken."""
    properties, location = split_body(body)
    require_feed_admin(principal, properties.owner)
    await require_department(session, properties.owner)
    require_media_path_of_owner(properties.owner, properties.stream.media_path)
    values = content_values(properties, location)
    existing = (
        await session.execute(
            select(feeds.c.id, feeds.c.retired_at).where(
                feeds.c.owner == properties.owner, feeds.c.code == properties.code
            )
        )
    ).first()
    if existing is not None:
        raise Conflict(
            f"department {properties.owner!r} already registered code {properties.code!r}",
            code="feed_exists",
            details={"id": existing.id, "retired": existing.retired_at is not None},
        )
    now = utcnow()
    row = {
        **values,
        "id": new_feed_id(),
        "status": "unknown",
        "last_seen": None,
        "version": 1,
        "revision": 1,
        "created_at": now,
        "updated_at": now,
        "retired_at": None,
    }
    hints = await duplicate_hints(
        session, properties.owner, properties.code, values["stream_url_key"]
    )
    await session.execute(insert(feeds), [row])
    await enqueue_many(session, [outbox_row(EventType.FEED_REGISTERED, row, now)])
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(
            f"department {properties.owner!r} already registered code {properties.code!r}",
            code="feed_exists",
        ) from None
    index.apply_rows([row])
    document = feed_document(row, show_url=True)
    document["duplicates"] = hints
    return document


async def get_feed(session: AsyncSession, principal: Principal, feed_id: str) -> dict[str, Any]:
    row = await load_row(session, feed_id)
    return feed_document(row, show_url=can_see_internal(principal, row["owner"]))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, ``null`` removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


async def update_feed(
    session: AsyncSession,
    index: FeedIndex,
    principal: Principal,
    feed_id: str,
    patch: dict[str, Any],
    if_match: str | None,
) -> dict[str, Any]:
    """Applies a merge patch if ``If-Match`` names the current version (else 412)."""
    expected = parse_if_match(if_match, required=True)
    row = await load_row(session, feed_id, for_update=True)
    require_feed_admin(principal, row["owner"])
    if row["retired_at"] is not None:
        raise Conflict(f"feed {feed_id} is retired", code="feed_retired")
    if expected != row["version"]:
        raise PreconditionFailed(
            f"feed {feed_id} is at version {row['version']}, not {expected}",
            details={"current_version": row["version"]},
        )
    for name in IMMUTABLE_FIELDS:
        if name in patch and patch[name] != row[name]:
            raise Unprocessable(
                f"{name} cannot change; register a new feed instead", code="immutable_field"
            )
    merged = merge_patch(input_document(row), patch)
    try:
        body = FeedCreate.model_validate(merged, strict=None)
    except ValidationError as error:
        raise unprocessable(error, "invalid_feed") from None
    require_media_path_of_owner(body.owner, body.stream.media_path)
    values = content_values(body, body.location)
    if values["content_hash"] == row["content_hash"]:
        return feed_document(row, show_url=True)
    now = utcnow()
    changes = {
        **values,
        "version": row["version"] + 1,
        "revision": row["revision"] + 1,
        "updated_at": now,
    }
    result = await session.execute(
        update(feeds)
        .where(and_(feeds.c.id == feed_id, feeds.c.version == expected))
        .values(**changes)
    )
    if rows_matched(result) != 1:
        await session.rollback()
        raise PreconditionFailed(f"feed {feed_id} changed meanwhile; read it again")
    updated = {**row, **changes}
    await enqueue_many(session, [outbox_row(EventType.FEED_UPDATED, updated, now)])
    await session.commit()
    index.apply_rows([updated])
    return feed_document(updated, show_url=True)


async def retire_feed(
    session: AsyncSession,
    index: FeedIndex,
    principal: Principal,
    feed_id: str,
    if_match: str | None,
) -> dict[str, Any]:
    """Soft delete: the feed stays, says it is retired, and leaves searches by default."""
    expected = parse_if_match(if_match, required=False)
    row = await load_row(session, feed_id, for_update=True)
    require_feed_admin(principal, row["owner"])
    if expected is not None and expected != row["version"]:
        raise PreconditionFailed(
            f"feed {feed_id} is at version {row['version']}, not {expected}",
            details={"current_version": row["version"]},
        )
    if row["retired_at"] is not None:
        return feed_document(row, show_url=True)
    now = utcnow()
    changes = {
        "retired_at": now,
        "updated_at": now,
        "version": row["version"] + 1,
        "revision": row["revision"] + 1,
    }
    await session.execute(
        update(feeds)
        .where(and_(feeds.c.id == feed_id, feeds.c.version == row["version"]))
        .values(**changes)
    )
    retired = {**row, **changes}
    await enqueue_many(session, [outbox_row(EventType.FEED_RETIRED, retired, now)])
    await session.commit()
    index.apply_rows([retired])
    return feed_document(retired, show_url=True)


# ---------------------------------------------------------------------------- reads


def index_query(filters: FeedFilters, *, feed_ids: Sequence[str] | None = None) -> IndexQuery:
    """The index's query for the filters; ``feed_ids`` (the feeds beneath ``catalog_node``,
    read from the catalog tree by the caller) narrows it to those feeds."""
    geometry = None
    relation = "intersects"
    if isinstance(filters, FeedSearch) and filters.geometry is not None:
        geometry = filters.geometry.to_shapely
        relation = filters.relation
    return IndexQuery(
        owner=filters.department,
        kind=filters.kind,
        industry=filters.industry,
        type_code=filters.type_code,
        region=filters.region,
        sharing=filters.sharing,
        status=filters.status,
        tag=filters.tag,
        text=filters.q,
        include_retired=filters.include_retired,
        bbox=(
            (filters.bbox.min_lon, filters.bbox.min_lat, filters.bbox.max_lon, filters.bbox.max_lat)
            if filters.bbox
            else None
        ),
        near=(filters.near.lon, filters.near.lat, filters.near.metres) if filters.near else None,
        sees=(filters.sees.lon, filters.sees.lat) if filters.sees else None,
        geometry=geometry,
        relation=relation,
        placed=filters.placed,
        feed_ids=tuple(feed_ids) if feed_ids is not None else None,
    )


async def catalog_node_feeds(session: AsyncSession, filters: FeedFilters) -> list[str] | None:
    """The feed ids beneath the filters' catalog-tree node (None when no node is asked)."""
    if filters.catalog_node is None:
        return None
    from registry_api.catalog.tree import feed_ids_under  # the catalog builds on the feeds

    return await feed_ids_under(
        session, node_id=filters.catalog_node, department=filters.department
    )


async def load_rows(session: AsyncSession, feed_ids: Sequence[str]) -> dict[str, Mapping[Any, Any]]:
    if not feed_ids:
        return {}
    result = await session.execute(select(feeds).where(feeds.c.id.in_(list(feed_ids))))
    return {row["id"]: row for row in result.mappings()}


async def load_page_rows(
    session: AsyncSession, feed_ids: Sequence[str]
) -> Mapping[str, Mapping[Any, Any]]:
    """Rows to render as documents (timestamps may be RFC 3339 text rather than datetimes).

    On SQLite the rows come straight from the driver: a page of 100 feeds is read in half
    the time SQLAlchemy's result processing takes, which matters for search latency.
    """
    if not feed_ids or not sqlite_fast.is_sqlite(session):
        return await load_rows(session, feed_ids)
    return await sqlite_fast.select_rows(session, feed_ids)


async def search_feeds(
    index: FeedIndex,
    principal: Principal,
    filters: FeedFilters,
    *,
    limit: int = PAGE_LIMIT_DEFAULT,
    cursor: str | None = None,
    feed_ids: Sequence[str] | None = None,
) -> bytes:
    """One page of feeds matching the filters, as the caller may see them, as JSON: the
    index's match joined with the documents rendered when the feeds last changed.
    ``feed_ids``: the feeds beneath the filters' ``catalog_node`` (see
    :func:`catalog_node_feeds`)."""
    try:
        page = index.search(index_query(filters, feed_ids=feed_ids), limit=limit, cursor=cursor)
    except InvalidCursor as error:
        raise Unprocessable(str(error), code="invalid_cursor") from None
    return index.rendered.page(
        page.ids, page.distances, principal, total=page.total, next_cursor=page.next_cursor
    )


async def search_feed_ids(
    index: FeedIndex, search: FeedSearch, session: AsyncSession | None = None
) -> list[str]:
    """Ids of the first ``search.limit`` feeds a search finds (for access requests by area);
    a ``catalog_node`` selection needs the session to read the tree."""
    if search.catalog_node is not None and session is None:
        raise Unprocessable("catalog_node is not supported here", code="invalid_filter")
    feed_ids = await catalog_node_feeds(session, search) if session is not None else None
    try:
        query = index_query(search, feed_ids=feed_ids)
        return index.search(query, limit=search.limit, cursor=search.cursor).ids
    except InvalidCursor as error:
        raise Unprocessable(str(error), code="invalid_cursor") from None
