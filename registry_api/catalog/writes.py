"""Writing one catalog application: feed rows with their outbox events, catalog nodes, and
retirements, in the caller's transaction (nothing is committed here)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.bulk_insert import DriverInsert, prepare_insert
from registry_api.catalog.models import catalog_nodes_table
from registry_api.db import rows_matched
from registry_api.driver_work import execute_insert
from registry_api.errors import Conflict
from registry_api.feeds import sqlite_rows as sqlite_fast
from registry_api.feeds.events import outbox_row
from registry_api.feeds.models import feeds_table
from registry_api.outbox.service import enqueue_prepared, prepare_enqueue
from schemas.events import EventType, utcnow

feeds = feeds_table
nodes = catalog_nodes_table
WRITE_CHUNK = 5_000


class WritePlan:
    """The rows one application writes, gathered before any write."""

    def __init__(self, department: str, now: datetime) -> None:
        self.department = department
        self.now = now
        self.feed_inserts: list[dict[str, Any]] = []
        self.feed_updates: list[dict[str, Any]] = []
        self.feed_retirements: list[dict[str, Any]] = []
        self.node_inserts: list[dict[str, Any]] = []
        self.node_updates: list[dict[str, Any]] = []


@dataclass
class _Prepared:
    """The inserts of a plan, encoded for the driver ahead of the writes (CPU only)."""

    outbox: list[DriverInsert]
    sqlite_feeds: list[list[tuple[Any, ...]]] | None  # SQLite's fast path, else None
    nodes: list[DriverInsert]


def _chunks(rows: list[Any]) -> list[list[Any]]:
    return [rows[begin : begin + WRITE_CHUNK] for begin in range(0, len(rows), WRITE_CHUNK)]


def _prepare(plan: WritePlan, dialect: Dialect, created_at: datetime) -> _Prepared:
    events = [outbox_row(EventType.FEED_REGISTERED, row, created_at) for row in plan.feed_inserts]
    events += [outbox_row(EventType.FEED_UPDATED, row, created_at) for row in plan.feed_updates]
    events += [outbox_row(EventType.FEED_RETIRED, row, created_at) for row in plan.feed_retirements]
    sqlite = dialect.name == "sqlite"
    return _Prepared(
        outbox=[
            prepare_enqueue(chunk, created_at=created_at, dialect=dialect)
            for chunk in _chunks(events)
        ],
        sqlite_feeds=[sqlite_fast.encode_rows(chunk) for chunk in _chunks(plan.feed_inserts)]
        if sqlite
        else None,
        nodes=[prepare_insert(nodes, chunk, dialect) for chunk in _chunks(plan.node_inserts)],
    )


async def write_plan(
    session: AsyncSession, plan: WritePlan, retiring_nodes: list[Mapping[Any, Any]], now: datetime
) -> None:
    # Encoding thousands of events and rows is pure CPU (a few hundred ms for 10,000
    # channels): done on a worker thread, the loop keeps answering meanwhile.
    prepared = await asyncio.to_thread(_prepare, plan, session.bind.dialect, utcnow())
    for outbox in prepared.outbox:
        await enqueue_prepared(session, outbox)
    if prepared.sqlite_feeds is not None:
        for encoded in prepared.sqlite_feeds:
            await sqlite_fast.insert_rows(session, encoded)
    else:
        for chunk in _chunks(plan.feed_inserts):
            await session.execute(insert(feeds), chunk)
    await _update_feeds(session, plan.feed_updates)
    await _update_feeds(session, plan.feed_retirements)
    for node_insert in prepared.nodes:
        await execute_insert(session, node_insert)
    if plan.node_updates:
        names = [name for name in plan.node_updates[0] if name not in ("owner", "device_id")]
        statement = (
            update(nodes)
            .where(
                and_(nodes.c.owner == bindparam("k_owner"), nodes.c.device_id == bindparam("k_id"))
            )
            .values({name: bindparam(f"v_{name}") for name in names})
        )
        await session.execute(
            statement,
            [
                {
                    "k_owner": row["owner"],
                    "k_id": row["device_id"],
                    **{f"v_{n}": row[n] for n in names},
                }
                for row in plan.node_updates
            ],
        )
    if retiring_nodes:
        statement = (
            update(nodes)
            .where(
                and_(nodes.c.owner == bindparam("k_owner"), nodes.c.device_id == bindparam("k_id"))
            )
            .values(retired_at=now, updated_at=now)
        )
        await session.execute(
            statement,
            [{"k_owner": row["owner"], "k_id": row["device_id"]} for row in retiring_nodes],
        )


async def _update_feeds(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Updates by id, each only if nobody bumped its version since it was read."""
    if not rows:
        return
    names = [name for name in rows[0] if name not in ("id", "created_at")]
    statement = (
        update(feeds)
        .where(and_(feeds.c.id == bindparam("b_id"), feeds.c.version == bindparam("b_expected")))
        .values({name: bindparam(f"b_{name}") for name in names})
    )
    for chunk in _chunks(rows):
        parameters = [
            {
                "b_id": row["id"],
                "b_expected": row["version"] - 1,
                **{f"b_{n}": row[n] for n in names},
            }
            for row in chunk
        ]
        result = await session.execute(statement, parameters)
        if rows_matched(result) not in (-1, len(chunk)):
            raise Conflict(
                "some of these feeds changed meanwhile; send the catalog again",
                code="concurrent_import",
            )
