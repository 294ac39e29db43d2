"""Applying checked catalog items to the registry, in the caller's transaction.

Channels are camera feeds upserted by (posting department, code): a new channel gets its
department's default sharing (``Secrecy=1``: not shared, unless the import says otherwise), an
existing one takes the catalog's name and, when the catalog has them, its coordinates; what
the department edited by hand (sharing, field of view, tags, a position the catalog lacks)
stays. Every item is also a catalog node (platform, group, organisation, device, channel)
keyed by (department, id): the tree. A complete answer of a platform retires the channels and
nodes of that platform it no longer lists; a retired one that reappears comes back.
Nothing here touches another department's rows: every lookup and write is by owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.catalog.items import LIVENESS_OF, CatalogEntryItem, ItemProblem
from registry_api.catalog.models import catalog_nodes_table
from registry_api.catalog.writes import WritePlan, write_plan
from registry_api.feeds.documents import content_values, input_document, new_feed_ids
from registry_api.feeds.index.records import Vocabulary
from registry_api.feeds.models import feeds_table
from registry_api.feeds.problems import first_problem, validation_details
from schemas.feeds import (
    FeedCreate,
    FeedProperties,
    PointGeometry,
    Sharing,
    SharingClass,
    StreamEndpoint,
)

feeds = feeds_table
nodes = catalog_nodes_table
LOOKUP_CHUNK = 4_000
SECRET_LEGAL_BASIS = "GB/T 28181 Secrecy=1: the platform's catalog marks this channel classified"
DESCRIBING = (None, "ADD", "UPDATE")


@dataclass(frozen=True)
class ImportOptions:
    """How new channels are shared: ``sharing`` for ordinary ones, ``secret_sharing`` for the
    ones the platform marks ``Secrecy=1`` (a department may choose to share those too)."""

    sharing: SharingClass = "unconditional"
    secret_sharing: SharingClass = "not_shared"


@dataclass
class Applied:
    """What one application changed, and what it leaves to do after the commit."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    retired: int = 0
    revived: int = 0
    unplaced: int = 0
    nodes_written: int = 0
    nodes_retired: int = 0
    rejected: list[ItemProblem] = field(default_factory=list)
    rows: list[Mapping[str, Any]] = field(default_factory=list)  # feed rows written
    renderings: list[bytes] = field(default_factory=list)  # of ``rows`` (feeds/rendered.py)
    liveness: list[tuple[str, str]] = field(default_factory=list)  # (feed id, online|offline)


def new_channel(
    item: CatalogEntryItem, *, department: str, platform_id: str, options: ImportOptions
) -> FeedProperties:
    """A new channel's feed properties. Built without validating again: the item's id, name
    and position were checked by ``classify_items``, and the rest is made here from them
    (``tests/unit/test_catalog_manscdp.py`` proves the result validates); at 50,000 channels
    a second validation would be a third of the import."""
    sharing_class = options.secret_sharing if item.secret else options.sharing
    legal_basis = None
    if sharing_class == "not_shared":
        legal_basis = SECRET_LEGAL_BASIS if item.secret else "the department's default"
    return FeedProperties.model_construct(
        kind="camera",
        code=item.device_id,
        owner=department,
        name=item.name or item.device_id,  # classify_items requires a name of a new item
        stream=StreamEndpoint.model_construct(
            protocol="gb28181",
            url=f"gb28181://{platform_id}/{item.device_id}",
            media_path=f"{department}/gb28181/{item.device_id}",
        ),
        sharing=Sharing.model_construct(
            sharing_class=sharing_class, conditions=None, legal_basis=legal_basis
        ),
        # given, not defaulted: model_construct inspects a default factory's signature on
        # every call, which costs more than the rest of the construction
        datastreams=[],
        tags=[],
    )


def _point(item: CatalogEntryItem) -> PointGeometry | None:
    if item.lon is None or item.lat is None:
        return None
    return PointGeometry.model_construct(type="Point", coordinates=[item.lon, item.lat])


async def _chunks_of(
    session: AsyncSession, statement_of: Any, keys: Sequence[str]
) -> list[Mapping[Any, Any]]:
    rows: list[Mapping[Any, Any]] = []
    for begin in range(0, len(keys), LOOKUP_CHUNK):
        result = await session.execute(statement_of(list(keys[begin : begin + LOOKUP_CHUNK])))
        rows += list(result.mappings())
    return rows


async def existing_channels(
    session: AsyncSession, department: str, codes: Sequence[str]
) -> dict[str, Mapping[Any, Any]]:
    rows = await _chunks_of(
        session,
        lambda chunk: select(feeds).where(feeds.c.owner == department, feeds.c.code.in_(chunk)),
        codes,
    )
    return {row["code"]: row for row in rows}


async def existing_nodes(
    session: AsyncSession, department: str, device_ids: Sequence[str]
) -> dict[str, Mapping[Any, Any]]:
    rows = await _chunks_of(
        session,
        lambda chunk: select(nodes).where(
            nodes.c.owner == department, nodes.c.device_id.in_(chunk)
        ),
        device_ids,
    )
    return {row["device_id"]: row for row in rows}


def _plan_channel(
    item: CatalogEntryItem,
    current: Mapping[Any, Any] | None,
    *,
    plan: WritePlan,
    applied: Applied,
    platform_id: str,
    options: ImportOptions,
) -> dict[str, Any] | None:
    """The channel's feed row after this item (None when the item is refused)."""
    if current is not None and _says_nothing_new(item, current):
        applied.unchanged += 1
        if current["lon"] is None:
            applied.unplaced += 1
        return dict(current)
    try:
        if current is None:
            properties = new_channel(
                item, department=plan.department, platform_id=platform_id, options=options
            )
            location = _point(item)
        else:
            document = input_document(current)
            document["name"] = item.name
            if item.lon is not None:
                document["location"] = {"type": "Point", "coordinates": [item.lon, item.lat]}
            body = FeedCreate.model_validate(document, strict=None)
            properties, location = body, body.location
    except ValidationError as error:
        applied.rejected.append(
            ItemProblem(item.index, item.device_id, first_problem(validation_details(error)))
        )
        return None
    values = content_values(properties, location)
    if values["lon"] is None:
        applied.unplaced += 1
    if current is None:
        values.update(
            id="", status="unknown", last_seen=None, version=1, revision=1,
            created_at=plan.now, updated_at=plan.now, retired_at=None,
        )  # fmt: skip
        plan.feed_inserts.append(values)
        applied.created += 1
        return values
    if values["content_hash"] == current["content_hash"] and current["retired_at"] is None:
        applied.unchanged += 1
        return dict(current)
    if current["retired_at"] is not None:
        applied.revived += 1
    else:
        applied.updated += 1
    values.update(
        id=current["id"], status=current["status"], last_seen=current["last_seen"],
        version=current["version"] + 1, revision=current["revision"] + 1,
        created_at=current["created_at"], updated_at=plan.now, retired_at=None,
    )  # fmt: skip
    plan.feed_updates.append(values)
    return values


def _says_nothing_new(item: CatalogEntryItem, current: Mapping[Any, Any]) -> bool:
    """A live channel whose name and (given) position the item repeats: nothing to write.
    (The common case of a platform's periodic full catalog, decided without validating.)"""
    if current["retired_at"] is not None or item.name != current["name"]:
        return False
    return item.lon is None or (item.lon == current["lon"] and item.lat == current["lat"])


def _node_row(
    item: CatalogEntryItem, *, department: str, platform_id: str, feed_id: str | None, now: datetime
) -> dict[str, Any]:
    attributes = dict(item.attributes)
    if item.status:
        attributes["Status"] = item.status
    if item.lon is not None:
        attributes["Longitude"], attributes["Latitude"] = str(item.lon), str(item.lat)
    return {
        "owner": department,
        "device_id": item.device_id,
        "kind": item.kind,
        "name": item.name or item.device_id,
        "parent_id": item.parent_id,
        "platform_id": platform_id,
        "feed_id": feed_id,
        "attributes": attributes,
        "updated_at": now,
        "retired_at": None,
    }


def _plan_node(plan: WritePlan, row: dict[str, Any], current: Mapping[Any, Any] | None) -> None:
    if current is None:
        plan.node_inserts.append(row)
        return
    same = all(
        current[name] == row[name]
        for name in ("kind", "name", "parent_id", "platform_id", "feed_id", "attributes")
    )
    if same and current["retired_at"] is None:
        return
    plan.node_updates.append(row)


def _retirement(row: Mapping[Any, Any], now: datetime) -> dict[str, Any]:
    return {
        **row,
        "retired_at": now,
        "updated_at": now,
        "version": row["version"] + 1,
        "revision": row["revision"] + 1,
    }


async def apply_items(
    session: AsyncSession,
    *,
    department: str,
    platform_id: str,
    items: Sequence[CatalogEntryItem],
    complete: bool,
    options: ImportOptions,
    now: datetime,
    owners: Vocabulary,
    keep: Iterable[str] = (),
) -> Applied:
    """Writes the items (and, for a complete answer, the retirements) without committing.

    ``keep``: ids the answer listed but that were refused; a complete answer does not
    retire them (they are there, only badly described).
    """
    applied = Applied()
    plan = WritePlan(department, now)
    # sorting tens of thousands of items: a worker thread's (~75 ms for 50,000 channels)
    sorted_items = await asyncio.to_thread(_sorted_items, items, platform_id)
    node_rows = await existing_nodes(session, department, sorted_items.ids)
    channel_rows = await existing_channels(session, department, sorted_items.channel_codes)
    if not sorted_items.platform_described:
        platform_node = node_rows.get(platform_id)
        if platform_node is None or platform_node["retired_at"] is not None:
            platform_row: dict[str, Any] = {
                "owner": department, "device_id": platform_id, "kind": "platform",
                "name": platform_node["name"] if platform_node else platform_id,
                "parent_id": None, "platform_id": platform_id, "feed_id": None,
                "attributes": {}, "updated_at": now, "retired_at": None,
            }  # fmt: skip
            _plan_node(plan, platform_row, platform_node)

    # Planning thousands of channels is pure CPU over the rows just read (a second for
    # 10,000 here at worst): done on a worker thread, the loop keeps answering meanwhile.
    retiring_nodes = await asyncio.to_thread(
        _plan_items, plan, applied, describing=sorted_items.describing,
        deleting=sorted_items.deleting, reporting=sorted_items.reporting,
        node_rows=node_rows, channel_rows=channel_rows,
        platform_id=platform_id, options=options,
    )  # fmt: skip

    if complete:
        listed = sorted_items.listed | set(keep)
        absent = await _absent_nodes(session, department, platform_id, listed)
        retiring_nodes += absent
        absent_feeds = [row["feed_id"] for row in absent if row["feed_id"]]
        for live in await _live_feeds(session, department, absent_feeds):
            plan.feed_retirements.append(_retirement(live, now))

    applied.renderings = await write_plan(session, plan, retiring_nodes, now, owners)
    applied.retired = len(plan.feed_retirements)
    applied.nodes_written = len(plan.node_inserts) + len(plan.node_updates)
    applied.nodes_retired = len(retiring_nodes)
    applied.rows = plan.feed_rows
    return applied


def _plan_items(
    plan: WritePlan,
    applied: Applied,
    *,
    describing: Sequence[CatalogEntryItem],
    deleting: Sequence[CatalogEntryItem],
    reporting: Sequence[CatalogEntryItem],
    node_rows: Mapping[str, Mapping[Any, Any]],
    channel_rows: Mapping[str, Mapping[Any, Any]],
    platform_id: str,
    options: ImportOptions,
) -> list[Mapping[Any, Any]]:
    """The rows the items write, into ``plan`` and ``applied``; returns the catalog nodes
    to retire. Touches no session: runs on a worker thread."""
    department, now = plan.department, plan.now
    new_channels = sum(
        1 for item in describing if item.kind == "channel" and item.device_id not in channel_rows
    )
    fresh = iter(new_feed_ids(new_channels))
    for item in describing:
        feed_id: str | None = None
        if item.kind == "channel":
            row = _plan_channel(
                item, channel_rows.get(item.device_id), plan=plan, applied=applied,
                platform_id=platform_id, options=options,
            )  # fmt: skip
            if row is None:
                continue
            if not row["id"]:
                row["id"] = next(fresh)
            feed_id = str(row["id"])
            if item.status:
                applied.liveness.append((feed_id, LIVENESS_OF[item.status]))
        node = _node_row(
            item, department=department, platform_id=platform_id, feed_id=feed_id, now=now
        )
        _plan_node(plan, node, node_rows.get(item.device_id))

    retiring_nodes: list[Mapping[Any, Any]] = []
    for item in deleting:
        current_node = node_rows.get(item.device_id)
        current_feed = channel_rows.get(item.device_id)
        if current_node is None and current_feed is None:
            applied.rejected.append(
                ItemProblem(item.index, item.device_id, "no such item in your catalog")
            )
            continue
        if current_node is not None and current_node["retired_at"] is None:
            retiring_nodes.append(current_node)
        if current_feed is not None and current_feed["retired_at"] is None:
            plan.feed_retirements.append(_retirement(current_feed, now))
    for item in reporting:
        current_node = node_rows.get(item.device_id)
        reported = current_node["feed_id"] if current_node is not None else None
        if reported is None or current_node is None or current_node["retired_at"] is not None:
            applied.rejected.append(
                ItemProblem(item.index, item.device_id, "no such live channel in your catalog")
            )
            continue
        applied.liveness.append((reported, LIVENESS_OF[item.event or ""]))

    return retiring_nodes


@dataclass
class _SortedItems:
    describing: list[CatalogEntryItem]  # the last of each id's describing events
    deleting: list[CatalogEntryItem]  # the last DEL of each id
    reporting: list[CatalogEntryItem]  # items that tell a status
    listed: set[str]  # every id the message names, and the platform's
    ids: list[str]  # the same, sorted
    channel_codes: list[str]  # channels described or deleted, sorted
    platform_described: bool  # the platform is one of the described items


def _sorted_items(items: Sequence[CatalogEntryItem], platform_id: str) -> _SortedItems:
    describing = _last_of_each([item for item in items if item.event in DESCRIBING])
    deleting = _last_of_each([item for item in items if item.event == "DEL"])
    listed = {item.device_id for item in items} | {platform_id}
    return _SortedItems(
        describing=describing,
        deleting=deleting,
        reporting=[item for item in items if item.event in LIVENESS_OF],
        listed=listed,
        ids=sorted(listed),
        channel_codes=sorted(
            {item.device_id for item in (*describing, *deleting) if item.kind == "channel"}
        ),
        platform_described=any(item.device_id == platform_id for item in describing),
    )


def _last_of_each(items: list[CatalogEntryItem]) -> list[CatalogEntryItem]:
    """One item per id, the last one (a Notify may change one channel twice)."""
    return list({item.device_id: item for item in items}.values())


async def _absent_nodes(
    session: AsyncSession, department: str, platform_id: str, listed: set[str]
) -> list[Mapping[Any, Any]]:
    statement = select(nodes).where(
        nodes.c.owner == department,
        nodes.c.platform_id == platform_id,
        nodes.c.retired_at.is_(None),
    )
    rows = (await session.execute(statement)).mappings().all()
    return [row for row in rows if row["device_id"] not in listed]


async def _live_feeds(
    session: AsyncSession, department: str, feed_ids: Sequence[str]
) -> list[Mapping[Any, Any]]:
    return await _chunks_of(
        session,
        lambda chunk: select(feeds).where(
            feeds.c.owner == department, feeds.c.id.in_(chunk), feeds.c.retired_at.is_(None)
        ),
        feed_ids,
    )
