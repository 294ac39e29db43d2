"""The access writes' one piece of driver work: a change's rows, its audit links, the chain head
and the outbox commit together or not at all, on SQLite (one call on aiosqlite's thread) and
on PostgreSQL (statement by statement); and SQLite's WAL checkpoints run in the background."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
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
    appending_events,
    unchained_events,
    verify_chain,
)
from registry_api.bulk_insert import DriverInsert, prepare_insert
from registry_api.db import (
    SQLITE_AUTOCHECKPOINT_PAGES,
    session_factory,
    sqlite_thread,
    writes_in_turn,
)
from registry_api.driver_work import (
    ROWS_PER_STATEMENT,
    DriverCalls,
    DriverStatement,
    commit_in_turn,
    execute_insert,
    run_driver_work,
)
from registry_api.identity.models import Department
from registry_api.outbox.models import OutboxMessage
from registry_api.outbox.service import row_messages
from registry_api.subscriptions.models import WebhookDelivery, WebhookSubscription
from registry_api.subscriptions.notify import on_access_events
from registry_api.wal_checkpoints import WalCheckpointer
from schemas.events import AccessEventData, EventType, new_event_id, utcnow

DEPARTMENT = "lz-test"


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


def encoded(event_type: EventType, actor: str, now: datetime, **data: Any) -> EncodedAccessEvent:
    """An access event of this test's department, as the writers record it."""
    payload = AccessEventData(
        requester_department=DEPARTMENT, action="live", requested_at=now, **data
    ).model_dump(mode="json")
    return EncodedAccessEvent(event_type, payload, actor, new_event_id(), now)


def events(request_id: str, count: int) -> list[EncodedAccessEvent]:
    now = utcnow()
    return [
        encoded(
            EventType.ACCESS_REQUESTED,
            "someone",
            now,
            feed_id=f"feed-{index:04d}",
            request_id=request_id,
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


async def commit_along(
    session: AsyncSession, recorded: list[EncodedAccessEvent], along: list[DriverInsert]
) -> None:
    """The access request's way of writing: its rows, then the events, committed in turn."""
    now = utcnow()
    dialect = (await session.connection()).dialect
    unchained = unchained_events(recorded, now, dialect)
    await commit_in_turn(session, "test", appending_events(along, unchained, now, dialect))


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
            await commit_along(session, events(request_id, 120), along)
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
            for _, value in row_messages(row.key, row.payload, row.messages, row.codec)
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
        await commit_along(session, events(taken, 5), [await insert_of(session, taken)])
        before = await counts(session)
    async with sessions() as session:
        fresh = new_id()
        # The second row repeats a request id: the driver refuses it after the first row,
        # the audit links and the outbox rows of the same work were never reached or are
        # rolled back with it.
        along = [await insert_of(session, fresh), await insert_of(session, taken)]
        with pytest.raises(IntegrityError):
            await commit_along(session, events(fresh, 50), along)
        await session.rollback()
    async with sessions() as session:
        assert await counts(session) == before
        assert await session.get(AccessRequest, fresh) is None
        verification = await verify_chain(session)
    assert verification.ok, verification.message


async def test_sqlite_a_refusal_at_the_commit_comes_out_as_sqlalchemys_and_writes_nothing(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A constraint checked only at the commit (a deferred foreign key) fails the commit on
    the connection's thread: it comes out as SQLAlchemy's error, as a statement's does, so a
    caller tells an invalid change from the database being away (the hook-event writer sets
    the first aside and retries the second)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the commit on the connection's thread is SQLite's")
    fresh = new_id()
    async with sessions() as session:
        before = await counts(session)
        dialect = (await session.connection()).dialect
        row = {**request_row(fresh), "requester_department": "lz-no-such-department"}
        insert = prepare_insert(TABLES.requests, [row], dialect)

        def work(calls: DriverCalls) -> None:
            calls.execute(DriverStatement("PRAGMA defer_foreign_keys = ON", ()))
            calls.executemany(insert)  # accepted here: the key is checked at the commit

        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            await commit_in_turn(session, "test", work)
        await session.rollback()
    async with sessions() as session:
        assert await counts(session) == before
        assert await session.get(AccessRequest, fresh) is None


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
            await commit_along(session, events(request_id, 300), along)
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


async def test_sqlite_keeps_statement_journals_in_memory(engine: AsyncEngine) -> None:
    """An access request's statements journal the pages they change; on disk that was a
    temporary file created, written and unlinked per request."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's temporary files")
    async with engine.connect() as connection:
        pragma = await connection.exec_driver_sql("PRAGMA temp_store")
        assert pragma.scalar() == 2  # MEMORY


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
        sqlite_connection, run_in_thread = await sqlite_thread(session)
        assert sqlite_connection is not None and run_in_thread is not None
        ran_on = await run_driver_work(session, lambda calls: threading.get_ident())
    assert ran_on != threading.get_ident()


async def test_sqlite_makes_one_hop_per_statement_and_none_to_end_nothing(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, monkeypatch: Any
) -> None:
    """Each hop to the connection's thread waits for the event loop (registry_api.sqlite_adapter):
    a statement is one hop, a read-only session ends with none, and a writer committing in one
    piece of driver work makes exactly that one. An open transaction still commits or rolls
    back."""
    if engine.dialect.name != "sqlite":
        pytest.skip("aiosqlite's hops")
    import aiosqlite

    hops: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    async with sessions() as session:
        await session.connection()
        hops.clear()
        assert await session.scalar(select(func.count()).select_from(Department)) == 1
        assert len(hops) == 1, hops  # the statement and its rows in one call (were four)
        hops.clear()
    assert hops == []  # returned to the pool without a rollback (were two)

    request_id = new_id()
    async with sessions() as session:
        insert = await insert_of(session, request_id)
        hops.clear()
        await commit_in_turn(session, "test", lambda calls: calls.executemany(insert))
    assert len(hops) == 1, hops  # the work and its commit; nothing after
    async with sessions() as session:
        assert await session.get(AccessRequest, request_id) is not None  # committed

    for ends, stays in (("commit", True), ("rollback", False)):
        async with sessions() as session:
            code = f"lz-{ends}"
            session.add(Department(code=code, name=ends, kind="transport", created_at=utcnow()))
            hops.clear()
            await session.flush()
            assert len(hops) == 1, hops  # the INSERT (were three: cursor, execute, close)
            hops.clear()
            await getattr(session, ends)()
            assert hops == [ends]  # a transaction was open: its end was sent
        async with sessions() as session:
            assert (await session.get(Department, code) is not None) is stays


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


async def test_one_hop_writers_and_statement_writers_take_the_same_turn(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """A writer whose whole transaction runs on the connection's thread (commit_in_turn)
    waits for a writer going statement by statement (writes_in_turn), and the other way
    round: never both at once, each wait measured under its writer's name."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the turns of a SQLite registry's writers")
    holds = asyncio.Event()
    spans: dict[str, tuple[float, float]] = {}

    def waited(writer: str) -> float:
        name = "feedgrid_sqlite_write_turn_wait_seconds_sum"
        return REGISTRY.get_sample_value(name, {"writer": writer}) or 0.0

    loop = asyncio.get_running_loop()

    def sleeping_work(writer: str, seconds: float) -> Callable[[Any], None]:
        def work(calls: Any) -> None:
            began = time.perf_counter()
            loop.call_soon_threadsafe(holds.set)
            time.sleep(seconds)  # on the connection's thread, holding the turn
            spans[writer] = (began, time.perf_counter())

        return work

    async def statement_writer(writer: str, seconds: float) -> None:
        async with sessions() as session, writes_in_turn(session, writer):
            began = time.perf_counter()
            holds.set()
            await asyncio.sleep(seconds)
            spans[writer] = (began, time.perf_counter())

    async def one_hop_writer(writer: str, seconds: float) -> None:
        async with sessions() as session:
            await commit_in_turn(session, writer, sleeping_work(writer, seconds))

    async def after_the_first(second: Awaitable[None]) -> None:
        await holds.wait()
        await second

    for first, second, waiting in (
        (statement_writer("test_statements", 0.3), one_hop_writer("test_hop", 0), "test_hop"),
        (one_hop_writer("test_hop_first", 0.3), statement_writer("test_then", 0), "test_then"),
    ):  # fmt: skip
        holds.clear()
        spans.clear()
        before = waited(waiting)
        await asyncio.gather(first, after_the_first(second))
        (_, first_ended), (second_began, _) = sorted(spans.values())
        assert second_began >= first_ended, spans  # never inside the other's turn
        assert waited(waiting) - before >= 0.2


async def test_a_writer_cancelled_while_waiting_for_its_turn_gives_it_back(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """A writer cancelled while it waits for its turn (its client gone) must not keep the
    turn, or every later writer waits forever."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the turns of a SQLite registry's writers")
    release = asyncio.Event()
    holds = asyncio.Event()

    async def holder() -> None:
        async with sessions() as session, writes_in_turn(session, "test_holder"):
            holds.set()
            await release.wait()

    async def waiter() -> None:
        async with sessions() as session, writes_in_turn(session, "test_cancelled"):
            raise AssertionError("a cancelled writer got its turn")

    holding = asyncio.create_task(holder())
    await holds.wait()
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.2)  # it waits for the turn
    waiting.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await holding

    async def later() -> None:
        async with sessions() as session:
            await commit_along(session, events(new_id(), 1), [await insert_of(session, new_id())])

    await asyncio.wait_for(later(), timeout=10)


async def test_deliveries_prepared_before_the_turn_skip_a_subscription_deleted_meanwhile(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A new request's notifications are prepared before its turn to write, from the
    subscriptions read then: one deleted before the commit gets nothing, and the request is
    written all the same (its foreign key would otherwise fail the whole change)."""
    request_id = new_id()
    due = utcnow() + timedelta(days=2)
    kept, gone = (f"sub-{name}-{uuid.uuid4().hex[:20]}" for name in ("kept", "gone"))
    async with sessions() as session:
        for subscription_id in (kept, gone):
            session.add(
                WebhookSubscription(
                    id=subscription_id,
                    department_code=DEPARTMENT,
                    url="https://hooks.example.org/feedgrid",
                    kinds=["request.pending"],
                    secret="s" * 32,
                    created_at=utcnow(),
                    created_by="test",
                )
            )
        await session.commit()
    now = utcnow()
    pending = encoded(
        EventType.ACCESS_DECIDED,
        "policy",
        now,
        feed_id="feed-0001",
        owner_department=DEPARTMENT,
        request_id=request_id,
        decision="pending",
        reason="owner_approval_required",
    )
    async with sessions() as session:
        listened = await on_access_events(session, [pending], {(request_id, DEPARTMENT): due})
        assert listened is not None
        async with sessions() as other:
            await other.delete(await other.get(WebhookSubscription, gone))
            await other.commit()
        dialect = (await session.connection()).dialect
        unchained = unchained_events([pending], now, dialect)
        along = [await insert_of(session, request_id)]
        work = appending_events(along, unchained, now, dialect, [listened])
        await commit_in_turn(session, "test", work)
    async with sessions() as session:
        assert await session.get(AccessRequest, request_id) is not None
        delivered = (
            await session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.subscription_id.in_([kept, gone]))
            )
        ).all()
    assert [row.subscription_id for row in delivered] == [kept]
    body = orjson.loads(delivered[0].payload)
    assert body["type"] == "request.pending"
    assert datetime.fromisoformat(body["data"]["due_at"]) == due


async def test_sqlite_writes_prepared_rows_in_as_few_statements_as_its_limits_allow(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Each statement is a wait for the GIL beside a busy loop: the rows go in statements of
    ROWS_PER_STATEMENT rows, fewer where the build allows fewer variables, all of them."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's limit on a statement's variables")
    rows = ROWS_PER_STATEMENT + 250
    columns = len(TABLES.requests.columns)
    for variables, statements in ((250_000, 2), (999, -(-rows // (999 // columns)))):
        ids = [new_id() for _ in range(rows)]
        async with sessions() as session:
            sqlite_connection, run_in_thread = await sqlite_thread(session)
            assert sqlite_connection is not None and run_in_thread is not None
            limit = sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
            was = await run_in_thread(sqlite_connection.setlimit, limit, variables)
            seen: list[str] = []
            await run_in_thread(sqlite_connection.set_trace_callback, seen.append)
            try:
                dialect = (await session.connection()).dialect
                insert = prepare_insert(TABLES.requests, [request_row(i) for i in ids], dialect)
                await execute_insert(session, insert)
                await session.commit()
            finally:
                await run_in_thread(sqlite_connection.set_trace_callback, None)
                await run_in_thread(sqlite_connection.setlimit, limit, was)
            written = await session.scalar(
                select(func.count())
                .select_from(TABLES.requests)
                .where(TABLES.requests.c.id.in_(ids))
            )
        assert written == rows
        assert len([sql for sql in seen if sql.lstrip().upper().startswith("INSERT")]) == statements
