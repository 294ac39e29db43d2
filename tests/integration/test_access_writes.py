"""The access writes' one piece of driver work: a change's rows, its audit links, the chain head
and the outbox commit together or not at all, on SQLite (one call on aiosqlite's thread) and
on PostgreSQL (statement by statement); and SQLite's WAL checkpoints run in the background."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry_api.access.models import AccessRequest
from registry_api.access.records import TABLES, new_id
from registry_api.audit.models import AuditChainHead, AuditEntry
from registry_api.audit.service import (
    CHAIN_HEAD_ID,
    EncodedAccessEvent,
    new_event_id,
    record_access_events,
    verify_chain,
)
from registry_api.bulk_insert import DriverInsert, prepare_insert
from registry_api.db import (
    SQLITE_AUTOCHECKPOINT_PAGES,
    create_engine,
    session_factory,
    writes_in_turn,
)
from registry_api.driver_work import _sqlite_thread, run_driver_work
from registry_api.identity.models import Department
from registry_api.outbox.models import OutboxMessage
from registry_api.outbox.service import row_messages
from registry_api.wal_checkpoints import WalCheckpointer
from schemas.events import AccessEventData, EventType, utcnow

DEPARTMENT = "lz-test"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    factory = session_factory(engine)
    async with factory() as session:
        session.add(Department(code=DEPARTMENT, name="Test", kind="transport", created_at=utcnow()))
        await session.commit()
    return factory


def request_row(request_id: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": request_id,
        "requester": "someone",
        "requester_department": DEPARTMENT,
        "purpose": "traffic management",
        "actions": ["live"],
        "valid_from": now,
        "valid_until": now + timedelta(hours=1),
        "emergency": False,
        "emergency_reason": None,
        "area": None,
        "selection": None,
        "created_at": now,
    }


def events(request_id: str, count: int) -> list[EncodedAccessEvent]:
    now = utcnow()
    return [
        EncodedAccessEvent(
            EventType.ACCESS_REQUESTED,
            AccessEventData(
                feed_id=f"feed-{index:04d}",
                requester_department=DEPARTMENT,
                request_id=request_id,
                action="live",
                requested_at=now,
            ).model_dump(mode="json"),
            "someone",
            new_event_id(),
            now,
        )
        for index in range(count)
    ]


async def counts(session: AsyncSession) -> tuple[int, int, int, int]:
    """(access requests, audit links, outbox messages, the chain head's last seq)."""
    head = await session.get(AuditChainHead, CHAIN_HEAD_ID, populate_existing=True)
    assert head is not None
    return (
        await session.scalar(select(func.count()).select_from(TABLES.requests)) or 0,
        await session.scalar(select(func.count()).select_from(AuditEntry)) or 0,
        await session.scalar(select(func.sum(OutboxMessage.messages))) or 0,
        head.last_seq,
    )


async def insert_of(session: AsyncSession, request_id: str) -> DriverInsert:
    dialect = (await session.connection()).dialect
    return prepare_insert(TABLES.requests, [request_row(request_id)], dialect)


async def test_a_change_its_audit_links_and_outbox_rows_commit_together(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        before = await counts(session)
        rows_before = await session.scalar(select(func.count()).select_from(OutboxMessage))
    for round_ in range(3):  # each append continues the chain from the head the last one left
        request_id = new_id()
        async with sessions() as session:
            along = [await insert_of(session, request_id)]
            await record_access_events(session, events(request_id, 120), along=along)
            await session.commit()
        async with sessions() as session:
            assert await counts(session) == (
                before[0] + round_ + 1,
                before[1] + 120 * (round_ + 1),
                before[2] + 120 * (round_ + 1),
                before[3] + 120 * (round_ + 1),
            )
            links = (
                await session.scalars(select(AuditEntry.request_id).where(AuditEntry.seq > 0))
            ).all()
            assert links.count(request_id) == 120
    async with sessions() as session:
        verification = await verify_chain(session)
        # The outbox holds the same events in the chain's order (in bundles of many).
        by_seq = select(AuditEntry.event_id).order_by(AuditEntry.seq)
        chained = (await session.scalars(by_seq)).all()
        published = [
            orjson.loads(value)["id"]
            for row in await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
            for _, value in row_messages(row.key, row.payload, row.messages)
        ]
        rows = await session.scalar(select(func.count()).select_from(OutboxMessage))
    assert verification.ok, verification.message
    assert verification.entries_checked == before[1] + 360
    assert published[-360:] == list(chained[-360:])
    assert rows == (rows_before or 0) + 3  # each change's 120 events: one bundle


async def test_a_failing_row_leaves_nothing_of_the_change_written(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    taken = new_id()
    async with sessions() as session:
        await record_access_events(
            session, events(taken, 5), along=[await insert_of(session, taken)]
        )
        await session.commit()
        before = await counts(session)
    async with sessions() as session:
        fresh = new_id()
        # The second row repeats a request id: the driver refuses it after the first row,
        # the audit links and the outbox rows of the same work were never reached or are
        # rolled back with it.
        along = [await insert_of(session, fresh), await insert_of(session, taken)]
        with pytest.raises(IntegrityError):
            await record_access_events(session, events(fresh, 50), along=along)
        await session.rollback()
    async with sessions() as session:
        assert await counts(session) == before
        assert await session.get(AccessRequest, fresh) is None
        verification = await verify_chain(session)
    assert verification.ok, verification.message


async def test_sqlite_checkpoints_its_log_in_the_background(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("a write-ahead log of SQLite's")
    async with engine.connect() as connection:
        pragma = await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")
        assert pragma.scalar() == SQLITE_AUTOCHECKPOINT_PAGES
    checkpointer = WalCheckpointer(engine, every_seconds=0.05)
    before = REGISTRY.get_sample_value("feedgrid_sqlite_wal_checkpoints_total") or 0.0
    await checkpointer.start()
    try:
        request_id = new_id()
        async with sessions() as session:
            along = [await insert_of(session, request_id)]
            await record_access_events(session, events(request_id, 300), along=along)
            await session.commit()
        deadline = asyncio.get_running_loop().time() + 10
        while REGISTRY.get_sample_value("feedgrid_sqlite_wal_checkpoints_total") == before:
            assert asyncio.get_running_loop().time() < deadline, "no background checkpoint"
            await asyncio.sleep(0.05)
    finally:
        await checkpointer.stop()
    # The commit's pages are in the database file now: a checkpoint finds nothing left to copy.
    pages, copied = await checkpointer.checkpoint()
    assert pages >= 0 and copied == pages
    assert REGISTRY.get_sample_value("feedgrid_sqlite_wal_pages_not_checkpointed") == 0


async def test_sqlite_hands_out_the_connection_returned_last(engine: AsyncEngine) -> None:
    """Its page cache is the warm one (another connection's write empties a cache)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's per-connection page cache")
    async with engine.connect() as first, engine.connect() as second:
        first_raw = (await first.get_raw_connection()).driver_connection
        second_raw = (await second.get_raw_connection()).driver_connection
        assert first_raw is not second_raw
        await first.close()  # returned first; `second` is returned last, leaving the block
    async with engine.connect() as again:
        assert (await again.get_raw_connection()).driver_connection is second_raw


async def test_sqlite_work_runs_on_the_connections_own_thread(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """The one-hop path depends on aiosqlite's private way into its thread: an aiosqlite that
    changed it would fall back to the slower path silently; this says so instead."""
    if engine.dialect.name != "sqlite":
        pytest.skip("aiosqlite's thread")
    async with sessions() as session:
        sqlite_connection, run_in_thread = await _sqlite_thread(session)
        assert sqlite_connection is not None and run_in_thread is not None
        ran_on = await run_driver_work(session, lambda calls: threading.get_ident())
    assert ran_on != threading.get_ident()


async def test_sqlite_writers_turns_are_measured_per_writer(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """A writer that waits behind another shows the wait in its own writer's metric, and each
    turn its time held; a turn left by an error is measured too."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the turns of a SQLite registry's writers")

    def sample(metric: str, writer: str, suffix: str) -> float:
        name = f"feedgrid_sqlite_write_turn_{metric}_seconds_{suffix}"
        return REGISTRY.get_sample_value(name, {"writer": writer}) or 0.0

    before = {
        (metric, writer, suffix): sample(metric, writer, suffix)
        for metric in ("wait", "held")
        for writer in ("test_first", "test_second")
        for suffix in ("count", "sum")
    }
    first_holds = asyncio.Event()

    async def first() -> None:
        async with sessions() as session, writes_in_turn(session, "test_first"):
            first_holds.set()
            await asyncio.sleep(0.2)

    async def second() -> None:
        await first_holds.wait()
        async with sessions() as session:
            with pytest.raises(RuntimeError):
                async with writes_in_turn(session, "test_second"):
                    raise RuntimeError("left by an error")

    await asyncio.gather(first(), second())

    def grew(metric: str, writer: str, suffix: str) -> float:
        return sample(metric, writer, suffix) - before[(metric, writer, suffix)]

    assert grew("held", "test_first", "count") == 1 and grew("held", "test_first", "sum") >= 0.2
    assert grew("wait", "test_second", "count") == 1 and grew("wait", "test_second", "sum") >= 0.15
    assert grew("held", "test_second", "count") == 1  # the error's turn, measured all the same
    assert grew("wait", "test_first", "sum") < 0.15  # nobody held the turn before it
