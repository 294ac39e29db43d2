"""The catalog tree the platforms described (platform > business group > virtual organisation
or device > channel), the feeds beneath a node, and a department's catalog summary.

The tree is public catalog metadata (names and ids, no stream addresses): every department
may read it, as it may find every feed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.catalog.models import catalog_nodes_table
from registry_api.feeds.models import feeds_table

nodes = catalog_nodes_table
feeds = feeds_table
MAX_DEPTH = 32  # a ParentID loop must not make the walk endless


async def feed_ids_under(
    session: AsyncSession, *, node_id: str, department: str | None
) -> list[str]:
    """Feeds of the live channels at or beneath the node (of every department holding a node
    with that id, or of ``department`` only)."""
    start = select(
        nodes.c.owner.label("owner"),
        nodes.c.device_id.label("device_id"),
        nodes.c.feed_id.label("feed_id"),
    ).where(nodes.c.device_id == node_id, nodes.c.retired_at.is_(None))
    if department is not None:
        start = start.where(nodes.c.owner == department)
    walk = start.cte("walk", recursive=True)
    child = nodes.alias("child")
    walk = walk.union(
        select(child.c.owner, child.c.device_id, child.c.feed_id).where(
            and_(
                child.c.owner == walk.c.owner,
                child.c.parent_id == walk.c.device_id,
                child.c.retired_at.is_(None),
            )
        )
    )
    statement = select(walk.c.feed_id).where(walk.c.feed_id.is_not(None)).distinct()
    return list((await session.execute(statement)).scalars().all())


def _node(row: Mapping[Any, Any], channels: int) -> dict[str, Any]:
    return {
        "id": row["device_id"],
        "kind": row["kind"],
        "name": row["name"],
        "department": row["owner"],
        "feed_id": row["feed_id"],
        "channels": channels,
        "children": [],
    }


async def catalog_tree(
    session: AsyncSession, *, department: str | None, include_channels: bool
) -> dict[str, Any]:
    """The live nodes as a forest: a node whose parent is unknown hangs from its platform."""
    columns = (
        nodes.c.owner, nodes.c.device_id, nodes.c.kind, nodes.c.name, nodes.c.parent_id,
        nodes.c.platform_id, nodes.c.feed_id,
    )  # fmt: skip
    statement = select(*columns).where(nodes.c.retired_at.is_(None))
    counts_statement = (
        select(nodes.c.owner, nodes.c.parent_id, func.count())
        .where(nodes.c.retired_at.is_(None), nodes.c.kind == "channel")
        .group_by(nodes.c.owner, nodes.c.parent_id)
    )
    if department is not None:
        statement = statement.where(nodes.c.owner == department)
        counts_statement = counts_statement.where(nodes.c.owner == department)
    if not include_channels:
        statement = statement.where(nodes.c.kind != "channel")
    rows = (await session.execute(statement.order_by(nodes.c.owner, nodes.c.device_id))).mappings()
    counts = {
        (owner, parent): count for owner, parent, count in await session.execute(counts_statement)
    }
    built: dict[tuple[str, str], dict[str, Any]] = {}
    parent_of: dict[tuple[str, str], tuple[str, str] | None] = {}
    for row in rows:
        key = (row["owner"], row["device_id"])
        built[key] = _node(row, counts.get(key, 0))
        parent = row["parent_id"] or (
            row["platform_id"] if row["platform_id"] != row["device_id"] else None
        )
        parent_of[key] = (row["owner"], parent) if parent else None
    platforms: dict[str, str] = {}
    for (owner, device_id), node in built.items():
        if node["kind"] == "platform":
            platforms.setdefault(owner, device_id)
    roots: list[dict[str, Any]] = []
    children: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for key, node in built.items():
        parent = parent_of[key]
        if parent is not None and parent not in built:
            platform = (key[0], platforms.get(key[0], key[1]))
            parent = platform if platform in built and platform != key else None
        if parent is None or _loops(parent_of, key):
            roots.append(node)
        else:
            children[parent].append(node)
    for key, node in built.items():
        node["children"] = children.get(key, [])
    return {"roots": roots, "nodes": len(built)}


def _loops(parent_of: dict[tuple[str, str], tuple[str, str] | None], key: tuple[str, str]) -> bool:
    """Whether following parents from ``key`` comes back to it (a bad ParentID cycle)."""
    seen = {key}
    current = parent_of.get(key)
    for _ in range(MAX_DEPTH):
        if current is None:
            return False
        if current in seen:
            return True
        seen.add(current)
        current = parent_of.get(current)
    return True


async def department_summary(session: AsyncSession, department: str) -> dict[str, Any]:
    """Live feeds, how many need a location, and the department's platforms."""
    live = and_(feeds.c.owner == department, feeds.c.retired_at.is_(None))
    total = await session.scalar(select(func.count()).select_from(feeds).where(live))
    unplaced = await session.scalar(
        select(func.count()).select_from(feeds).where(live, feeds.c.lon.is_(None))
    )
    node_count = await session.scalar(
        select(func.count())
        .select_from(nodes)
        .where(nodes.c.owner == department, nodes.c.retired_at.is_(None))
    )
    platforms = (
        await session.execute(
            select(nodes.c.device_id).where(
                nodes.c.owner == department,
                nodes.c.kind == "platform",
                nodes.c.retired_at.is_(None),
            )
        )
    ).scalars()
    return {
        "department": department,
        "feeds": int(total or 0),
        "unplaced": int(unplaced or 0),
        "catalog_nodes": int(node_count or 0),
        "platforms": sorted(platforms),
    }
