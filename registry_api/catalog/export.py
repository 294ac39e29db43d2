"""The shared catalog for an upper platform (the province, the nation): cascade out.

The upper platform is a department of FeedGrid (a requester principal). A channel is listed
when the policy engine (``registry_api/access/policy.py``, unchanged) grants that department
live view of it at once: unconditional feeds, conditional ones whose written conditions it
meets (named department, no purpose, area or action it cannot meet without asking), its own
feeds. Anything that would wait for the owner or be denied stays out: the upper platform asks
for those through an access request as any department does.

The items come in catalog order (tree nodes before the channels that hang from them, so an
importer meets a parent first) and in pages of ``page_size`` items under one ``SumNum``, as a
platform answers a catalog query over several messages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.feed_views import FEED_FACT_COLUMNS, FeedFacts, sharing_view
from registry_api.access.policy import PolicyContext, RequestFacts, decide
from registry_api.catalog.models import catalog_nodes_table
from registry_api.errors import Forbidden, Unprocessable
from registry_api.feeds.models import feeds_table
from registry_api.identity.models import Department
from registry_api.identity.principal import Principal
from schemas.access import AccessAction, Outcome
from schemas.events import utcnow

nodes = catalog_nodes_table
feeds = feeds_table
CASCADE_PURPOSE = "GB/T 28181 catalog cascade"
NODE_ORDER = {"platform": 0, "business_group": 1, "virtual_organisation": 2, "device": 3}
# Catalog fields an item keeps from the platform that described it.
CARRIED = (
    "Manufacturer", "Model", "Owner", "CivilCode", "Block", "Address", "SafetyWay",
    "RegisterWay", "Secrecy", "IPAddress", "Port", "BusinessGroupID", "Info.PTZType",
)  # fmt: skip


async def upper_platform(session: AsyncSession, principal: Principal, platform: str) -> Department:
    """The requesting platform's department: the city admin names any, a department only
    itself (an upper platform pulls its own view)."""
    if not principal.is_city_admin and principal.department != platform:
        raise Forbidden(
            "a department may pull only the catalog shared with itself", code="not_your_catalog"
        )
    department = await session.get(Department, platform)
    if department is None:
        raise Unprocessable(f"department {platform!r} does not exist", code="unknown_department")
    return department


def may_see(facts: FeedFacts, requester: Department, context: PolicyContext) -> bool:
    now = context.now
    request = RequestFacts(
        requester_department=requester.code,
        requester_department_kind=requester.kind,
        purpose=CASCADE_PURPOSE,
        actions=frozenset({AccessAction.live}),
        valid_from=now,
        valid_until=now + timedelta(minutes=1),
    )
    return decide(sharing_view(facts), request, context).outcome is Outcome.granted


class SharedCatalogCache:
    """The last answers per upper platform, while the feed index has not changed and for at
    most ``TTL_SECONDS``: a platform pulls a large catalog page after page, and every page
    would otherwise decide every feed again."""

    TTL_SECONDS = 30.0
    SIZE = 8

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, int, list[dict[str, Any]]]] = {}

    def get(self, platform: str, version: int) -> list[dict[str, Any]] | None:
        found = self._entries.get(platform)
        if found is None or found[1] != version or time.monotonic() - found[0] > self.TTL_SECONDS:
            return None
        return found[2]

    def put(self, platform: str, version: int, entries: list[dict[str, Any]]) -> None:
        if len(self._entries) >= self.SIZE:
            self._entries.pop(next(iter(self._entries)))
        self._entries[platform] = (time.monotonic(), version, entries)


CACHE = SharedCatalogCache()


async def shared_entries(
    session: AsyncSession, requester: Department, *, timezone: ZoneInfo
) -> list[dict[str, Any]]:
    """Every item of the shared catalog (nodes first, then channels), as MANSCDP fields plus
    ``_feed`` (the feed id) and ``_lon``/``_lat`` for the GeoJSON form."""
    context = PolicyContext(
        now=utcnow(), owner_deadline_days=5, emergency_grant_minutes=1, timezone=timezone
    )
    columns = (*FEED_FACT_COLUMNS, feeds.c.code, feeds.c.name, feeds.c.lon, feeds.c.lat,
               feeds.c.status)  # fmt: skip
    statement = (
        select(*columns)
        .where(feeds.c.kind == "camera", feeds.c.retired_at.is_(None))
        .order_by(feeds.c.id)
    )
    shared = []
    width = len(FEED_FACT_COLUMNS)
    for row in (await session.execute(statement)).all():
        if may_see(FeedFacts(*row[:width]), requester, context):
            shared.append(row)
    channel_nodes = await _nodes_of_feeds(session, [row.id for row in shared])
    ancestors = await _ancestors(session, channel_nodes.values())
    entries = [_node_entry(node) for node in ancestors]
    listed = {entry["DeviceID"] for entry in entries}
    for row in shared:
        if row.code in listed:
            continue  # the same code from two departments: one item (duplicates are resolved)
        listed.add(row.code)
        entries.append(_channel_entry(row, channel_nodes.get(row.id)))
    return entries


async def _nodes_of_feeds(
    session: AsyncSession, feed_ids: list[str]
) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for begin in range(0, len(feed_ids), 4_000):
        chunk = feed_ids[begin : begin + 4_000]
        statement = select(nodes).where(nodes.c.feed_id.in_(chunk), nodes.c.retired_at.is_(None))
        found.update({row["feed_id"]: row for row in (await session.execute(statement)).mappings()})
    return found


async def _ancestors(session: AsyncSession, channels: Any) -> list[Mapping[Any, Any]]:
    """The live tree nodes above the shared channels, parents before children."""
    wanted = {(row["owner"], row["parent_id"]) for row in channels if row["parent_id"]}
    found: dict[tuple[str, str], Mapping[Any, Any]] = {}
    depth: dict[tuple[str, str], int] = {}
    level = 0
    while wanted and level < 32:
        level += 1
        owners = {owner for owner, _ in wanted}
        ids = sorted({device_id for _, device_id in wanted})
        statement = select(nodes).where(
            nodes.c.owner.in_(owners), nodes.c.device_id.in_(ids), nodes.c.retired_at.is_(None)
        )
        rows = [
            row
            for row in (await session.execute(statement)).mappings()
            if (row["owner"], row["device_id"]) in wanted
            and row["kind"] not in ("channel", "platform")  # the exporter is the platform
        ]
        wanted = set()
        for row in rows:
            key = (row["owner"], row["device_id"])
            depth[key] = level
            if key not in found:
                found[key] = row
                if row["parent_id"]:
                    wanted.add((row["owner"], row["parent_id"]))
    # deeper levels were found later: the farthest ancestors (highest level) go first
    ordered = sorted(found, key=lambda key: (-depth[key], NODE_ORDER.get(found[key]["kind"], 9)))
    return [found[key] for key in ordered]


def _node_entry(node: Mapping[Any, Any]) -> dict[str, Any]:
    attributes = node["attributes"] or {}
    entry: dict[str, Any] = {"DeviceID": node["device_id"], "Name": node["name"]}
    if node["kind"] == "business_group":
        return entry
    if node["kind"] == "virtual_organisation":
        if attributes.get("BusinessGroupID"):
            entry["BusinessGroupID"] = attributes["BusinessGroupID"]
        parent = node["parent_id"]
        if parent and parent not in (attributes.get("BusinessGroupID"), node["platform_id"]):
            entry["ParentID"] = parent
    elif node["kind"] == "device":
        entry.update({name: attributes[name] for name in CARRIED if attributes.get(name)})
        entry["Parental"] = "1"
        if node["parent_id"] and node["parent_id"] != node["platform_id"]:
            entry["ParentID"] = node["parent_id"]
    return entry


def _channel_entry(row: Any, node: Mapping[str, Any] | None) -> dict[str, Any]:
    attributes = (node["attributes"] if node is not None else None) or {}
    entry: dict[str, Any] = {
        "DeviceID": row.code,
        "Name": row.name,
        **{name: attributes[name] for name in CARRIED if attributes.get(name)},
        "Parental": "0",
        "Status": "ON" if row.status == "online" else "OFF",
        "_feed": row.id,
        "_lon": row.lon,
        "_lat": row.lat,
    }
    if node is not None and node["parent_id"] and node["parent_id"] != node["platform_id"]:
        entry["ParentID"] = node["parent_id"]
    if row.lon is not None:
        entry["Longitude"], entry["Latitude"] = f"{row.lon:.6f}", f"{row.lat:.6f}"
    return entry


def page_of(entries: list[dict[str, Any]], page: int, page_size: int) -> tuple[list[Any], int]:
    pages = max(1, math.ceil(len(entries) / page_size))
    if page > pages:
        raise Unprocessable(f"page {page} of {pages}", code="page_out_of_range")
    return entries[(page - 1) * page_size : page * page_size], pages


def manscdp_fields(entry: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in entry.items() if not name.startswith("_")}


def geojson_feature(entry: Mapping[str, Any]) -> dict[str, Any]:
    lon, lat = entry.get("_lon"), entry.get("_lat")
    geometry = {"type": "Point", "coordinates": [lon, lat]} if lon is not None else None
    return {
        "type": "Feature",
        "id": entry["DeviceID"],
        "geometry": geometry,
        "properties": {
            **manscdp_fields(entry),
            "kind": "channel" if "_feed" in entry else "node",
            "feed_id": entry.get("_feed"),
        },
    }
