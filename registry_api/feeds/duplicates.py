"""Suspected duplicates across departments ("one number, one source"), with the evidence.

Three kinds of evidence, each its own group:

* ``same_code``: one GB/T 28181 code registered by two or more departments;
* ``same_stream_url``: one stream (URL compared without credentials, case-insensitive host)
  registered by two or more departments. The URL is internal, so the evidence is its
  SHA-256; only the city admin sees the URL itself;
* ``nearby_overlapping_view``: feeds of the same kind and different departments within a few
  metres of each other, cameras only when their fields of view overlap (when both have one).
  Close pairs are chained into groups.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.errors import Unprocessable
from registry_api.feeds.documents import location_document
from registry_api.feeds.geodesy import fov_polygons, geodesic_area_m2
from registry_api.feeds.index.proximity import close_pairs
from registry_api.feeds.index.queries import IndexQuery
from registry_api.feeds.models import feeds_table
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.principal import Principal

feeds = feeds_table
REASONS = ("same_code", "same_stream_url", "nearby_overlapping_view")
DEFAULT_DISTANCE_M = 3.0
# The nearby search puts points in cells this wide: a width near zero (5e-324 is "> 0") made
# every cell index overflow into one cell, and the pairs grow with the square of the feeds.
MIN_DISTANCE_M = 0.1
MAX_DISTANCE_M = 100.0


def _live_groups_by(column: Any, *, cameras_only: bool) -> Any:
    """Values of ``column`` shared by live feeds of two or more departments."""
    statement = (
        select(column)
        .where(feeds.c.retired_at.is_(None))
        .group_by(column)
        .having(func.count(func.distinct(feeds.c.owner)) > 1)
    )
    if cameras_only:
        statement = statement.where(feeds.c.kind == "camera")
    return statement


async def _grouped_by(
    session: AsyncSession, column: Any, *, cameras_only: bool
) -> dict[str, list[Mapping[Any, Any]]]:
    keys = (
        (await session.execute(_live_groups_by(column, cameras_only=cameras_only))).scalars().all()
    )
    groups: dict[str, list[Mapping[Any, Any]]] = {}
    for begin in range(0, len(keys), 400):
        chunk = list(keys[begin : begin + 400])
        statement = select(
            feeds.c.id, feeds.c.owner, feeds.c.kind, feeds.c.code, feeds.c.name, feeds.c.lon,
            feeds.c.lat, feeds.c.stream_url, feeds.c.stream_url_key,
        ).where(column.in_(chunk), feeds.c.retired_at.is_(None))  # fmt: skip
        if cameras_only:
            statement = statement.where(feeds.c.kind == "camera")
        for row in (await session.execute(statement)).mappings():
            groups.setdefault(row[column.name], []).append(row)
    return groups


def _member(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "owner": row["owner"],
        "kind": row["kind"],
        "code": row["code"],
        "name": row["name"],
        "location": location_document(row),
    }


def group_key(reason: str, feed_ids: Sequence[str]) -> str:
    """Names a group by its reason and members: a group that gains or loses a member is a
    new group (and needs a new decision)."""
    digest = hashlib.sha1(",".join(sorted(feed_ids)).encode()).hexdigest()[:20]
    return f"{reason}:{digest}"


def _group(
    reason: str, rows: Sequence[Mapping[Any, Any]], evidence: dict[str, Any]
) -> dict[str, Any]:
    members = sorted((_member(row) for row in rows), key=lambda member: member["id"])
    return {
        "key": group_key(reason, [member["id"] for member in members]),
        "reason": reason,
        "feeds": members,
        "departments": sorted({member["owner"] for member in members}),
        "evidence": evidence,
    }


async def _code_groups(session: AsyncSession) -> list[dict[str, Any]]:
    groups = await _grouped_by(session, feeds.c.code, cameras_only=True)
    return [
        _group("same_code", rows, {"code": code, "registrations": len(rows)})
        for code, rows in groups.items()
    ]


async def _stream_groups(session: AsyncSession, principal: Principal) -> list[dict[str, Any]]:
    groups = await _grouped_by(session, feeds.c.stream_url_key, cameras_only=False)
    found = []
    for key, rows in groups.items():
        evidence: dict[str, Any] = {"stream_url_sha256": key, "registrations": len(rows)}
        if principal.is_city_admin:
            evidence["stream_urls"] = sorted({row["stream_url"] for row in rows})
        found.append(_group("same_stream_url", rows, evidence))
    return found


def _overlap_m2(
    fov: np.ndarray, lon: np.ndarray, lat: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """Overlap area of the two fields of view of each pair; NaN where one has none."""
    overlap = np.full(first.shape[0], np.nan)
    both = ~np.isnan(fov[first, 0]) & ~np.isnan(fov[second, 0])
    if both.any():
        a, b = first[both], second[both]
        polygons_a = fov_polygons(lon[a], lat[a], fov[a, 0], fov[a, 1], fov[a, 2])
        polygons_b = fov_polygons(lon[b], lat[b], fov[b, 0], fov[b, 1], fov[b, 2])
        shared = shapely.intersection(polygons_a, polygons_b)
        overlap[both] = [geodesic_area_m2(shape) for shape in shared]
    return overlap


def _connected(pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for first, second in pairs:
        parent[root(first)] = root(second)
    members: dict[int, list[int]] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    return [sorted(group) for group in members.values()]


async def _nearby_groups(
    session: AsyncSession, index: FeedIndex, distance_m: float
) -> list[dict[str, Any]]:
    live = index.matching_columns(IndexQuery(placed=True))  # unplaced feeds are near nothing
    first, second, distance = close_pairs(live["lon"], live["lat"], distance_m)
    candidate = (live["kind"][first] == live["kind"][second]) & (
        live["owner"][first] != live["owner"][second]
    )
    first, second, distance = first[candidate], second[candidate], distance[candidate]
    overlap = _overlap_m2(live["fov"], live["lon"], live["lat"], first, second)
    # Cameras that both declare a view must look at the same place; otherwise position suffices.
    keep = np.isnan(overlap) | (overlap > 0)
    first, second, distance, overlap = first[keep], second[keep], distance[keep], overlap[keep]
    if first.size == 0:
        return []
    ids = [value.decode() for value in live["ids"]]
    pair_evidence: dict[int, list[dict[str, Any]]] = {}
    for a, b, metres, shared in zip(
        first.tolist(), second.tolist(), distance.tolist(), overlap.tolist(), strict=True
    ):
        pair_evidence.setdefault(a, []).append(
            {
                "feeds": [ids[a], ids[b]],
                "distance_m": round(metres, 2),
                "fov_overlap_m2": None if np.isnan(shared) else round(shared, 1),
            }
        )
    components = _connected(list(zip(first.tolist(), second.tolist(), strict=True)))
    wanted = sorted({ids[node] for component in components for node in component})
    rows = {}
    for begin in range(0, len(wanted), 400):
        statement = select(
            feeds.c.id,
            feeds.c.owner,
            feeds.c.kind,
            feeds.c.code,
            feeds.c.name,
            feeds.c.lon,
            feeds.c.lat,
        ).where(feeds.c.id.in_(wanted[begin : begin + 400]))
        rows.update({row["id"]: row for row in (await session.execute(statement)).mappings()})
    groups = []
    for component in components:
        members = [rows[ids[node]] for node in component if ids[node] in rows]
        if len({row["owner"] for row in members}) < 2:
            continue
        evidence = {
            "max_distance_m": distance_m,
            "pairs": [pair for node in component for pair in pair_evidence.get(node, [])],
        }
        groups.append(_group("nearby_overlapping_view", members, evidence))
    return groups


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _decode_offset(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
        if not text.startswith("o:") or not text[2:].isdigit():
            raise ValueError
        return int(text[2:])
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise Unprocessable(
            "the cursor is not one this API handed out", code="invalid_cursor"
        ) from None


async def find_duplicates(
    session: AsyncSession,
    index: FeedIndex,
    principal: Principal,
    *,
    reason: str | None = None,
    department: str | None = None,
    distance_m: float = DEFAULT_DISTANCE_M,
    limit: int = 100,
    cursor: str | None = None,
    decided: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Groups of suspected duplicates, ordered by reason then first feed id; paged. Groups
    whose key is in ``decided`` (resolved or dismissed) are left out."""
    groups: list[dict[str, Any]] = []
    if reason in (None, "same_code"):
        groups += await _code_groups(session)
    if reason in (None, "same_stream_url"):
        groups += await _stream_groups(session, principal)
    if reason in (None, "nearby_overlapping_view"):
        groups += await _nearby_groups(session, index, distance_m)
    if department is not None:
        groups = [group for group in groups if department in group["departments"]]
    if decided:
        groups = [group for group in groups if group["key"] not in decided]
    groups.sort(key=lambda group: (REASONS.index(group["reason"]), group["feeds"][0]["id"]))
    offset = _decode_offset(cursor) if cursor else 0
    page = groups[offset : offset + limit]
    more = offset + limit < len(groups)
    return {
        "groups": page,
        "total": len(groups),
        "next_cursor": _encode_offset(offset + limit) if more else None,
    }
