"""An owner's decision claims a request's items, and the notifier reads their due times, by the
primary key: never by the outcome's index, which holds every pending item in the registry. The
deadline keeper finds grants about to end by their end, not among every grant never revoked.

SQLite without statistics (no ANALYZE has run) guesses ten rows for an equality on an index's
first column, so ``outcome = 'pending'`` beat a hundred primary-key lookups: a decision on 100
feeds read every pending item of every request (40-55 ms at the demo city after a few thousand
requests, 3.7 ms for the whole rest of the decision). PostgreSQL plans from its statistics."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry_api.access.decisions import _claims
from registry_api.access.grants import list_grants
from registry_api.access.inbox import list_access_requests
from registry_api.access.models import AccessRequest, AccessRequestFeed, Grant
from registry_api.db import create_engine, session_factory
from registry_api.identity.models import Department
from registry_api.identity.principal import Principal
from registry_api.subscriptions.deadlines import DeadlineKeeper
from registry_api.subscriptions.notify import _due_times
from schemas.access import Outcome
from schemas.events import utcnow
from schemas.identity import Role
from schemas.settings import NotificationTuning
from tests.integration.plan_support import sqlite_file, sqlite_plan, statements_run

REQUESTER = "lz-tb"
OWNERS = ("lz-psb", "lz-um")


@pytest.fixture
def sqlite_path(sqlite_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "registry.db"
    shutil.copy(sqlite_template, target)
    return target


def _request(request_id: str) -> AccessRequest:
    now = utcnow()
    return AccessRequest(
        id=request_id, requester="someone", requester_department=REQUESTER,
        purpose="traffic management", actions=["live"], valid_from=now,
        valid_until=now + timedelta(hours=1), emergency=False, created_at=now,
    )  # fmt: skip


def _item(
    request_id: str, feed_id: str, owner: str, outcome: Outcome, due_hours: float | None
) -> AccessRequestFeed:
    due = utcnow() + timedelta(hours=due_hours) if due_hours is not None else None
    return AccessRequestFeed(
        request_id=request_id, feed_id=feed_id, owner_department=owner, outcome=outcome.value,
        reason="department_not_in_conditions", message="", actions=["live"], due_at=due,
        review_required=False,
    )  # fmt: skip


async def _seed(sessions: async_sessionmaker[AsyncSession], items: list[AccessRequestFeed]) -> None:
    async with sessions() as session:
        now = utcnow()
        session.add_all(
            Department(code=code, name=code, kind="public_security", created_at=now)
            for code in (REQUESTER, *OWNERS)
        )
        await session.flush()
        session.add_all(
            _request(request_id) for request_id in sorted({item.request_id for item in items})
        )
        await session.flush()
        session.add_all(items)
        await session.commit()


def test_a_decisions_claims_take_its_items_by_the_primary_key(sqlite_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{sqlite_path}")
    chosen = [_item("r1", f"feed-{n:03d}", OWNERS[0], Outcome.pending, 24) for n in range(100)]
    reviewed = _item("r1", "feed-review", OWNERS[0], Outcome.granted, None)
    values: dict[str, object] = {"outcome": Outcome.granted.value, "decided_by": "owner"}
    claims = _claims("r1", [*chosen, reviewed], values, engine.dialect)
    assert [wanted for _, wanted in claims] == [100, 1]
    for statement, _ in claims:
        plan = sqlite_plan(sqlite_path, statement.sql, statement.params)
        assert plan == [
            "SEARCH access_request_feeds USING INDEX sqlite_autoindex_access_request_feeds_1 "
            "(request_id=? AND feed_id=?)"
        ], (statement.sql, plan)


async def test_due_times_are_the_earliest_of_each_owners_pending_feeds(
    engine: AsyncEngine, database_url: str
) -> None:
    sessions = session_factory(engine)
    psb, um = OWNERS
    items = [
        _item("r1", "a", psb, Outcome.pending, 30),
        _item("r1", "b", psb, Outcome.pending, 20),
        _item("r1", "c", psb, Outcome.granted, 1),  # decided: its due time no longer counts
        _item("r1", "d", um, Outcome.denied, 5),  # nothing of this owner's waits
        _item("r2", "a", psb, Outcome.pending, None),  # pending without a due time
        _item("r3", "a", um, Outcome.pending, 2),  # not asked about
    ]
    await _seed(sessions, items)
    with statements_run(engine) as statements:
        async with sessions() as session:
            due = await _due_times(session, [("r1", psb), ("r1", um), ("r2", psb)])

    assert set(due) == {("r1", psb), ("r2", psb)}
    assert due[("r2", psb)] is None
    earliest, expected = due[("r1", psb)], items[1].due_at
    assert earliest is not None and expected is not None
    assert abs((earliest - expected).total_seconds()) < 0.001
    if (path := sqlite_file(database_url)) is not None:
        ((sql, params),) = [(s, p) for s, p in statements if "access_request_feeds" in s]
        plan = sqlite_plan(path, sql, params)
        assert any("sqlite_autoindex_access_request_feeds_1 (request_id=?)" in p for p in plan)
        assert not any("outcome" in p for p in plan), plan


def _grant(grant_id: str, ends_in: timedelta, *, revoked: bool = False) -> Grant:
    now = utcnow()
    return Grant(
        id=grant_id, request_id="r1", requester="someone", requester_department=REQUESTER,
        owner_department=OWNERS[0], actions=["live"], valid_from=now - timedelta(days=2),
        valid_until=now + ends_in, emergency=False, review_required=False, created_at=now,
        revoked_at=now if revoked else None,
    )  # fmt: skip


async def test_grants_about_to_end_are_found_by_their_end_not_among_all_unrevoked(
    engine: AsyncEngine, database_url: str
) -> None:
    sessions = session_factory(engine)
    await _seed(sessions, [_item("r1", "a", OWNERS[0], Outcome.granted, None)])
    async with sessions() as session:
        session.add_all(
            [
                _grant("ending", timedelta(minutes=5)),
                _grant("ended", -timedelta(days=1)),  # never revoked, long over
                _grant("later", timedelta(days=1)),
                _grant("revoked", timedelta(minutes=5), revoked=True),
            ]
        )
        await session.commit()
    keeper = DeadlineKeeper(
        NotificationTuning(), sessions, postgres=not database_url.startswith("sqlite")
    )
    with statements_run(engine) as statements:
        warned = await keeper.warn_expiring_grants(utcnow())

    assert warned == 1
    async with sessions() as session:
        marked = {
            grant.id for grant in await session.scalars(select(Grant)) if grant.expiry_warned_at
        }
    assert marked == {"ending"}
    if (path := sqlite_file(database_url)) is not None:
        finding = [(sql, params) for sql, params in statements if "expiry_warned_at IS NULL" in sql]
        assert len(finding) == 2  # the candidates' SELECT and their claiming UPDATE
        for sql, params in finding:
            plan = sqlite_plan(path, sql, params)
            assert not any("revoked_at" in line for line in plan), (sql, plan)


def _index_entries(path: Path, index: str) -> int:
    """How many entries an index holds, counted from its pages (SQLite's dbstat)."""
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute(
            "SELECT coalesce(sum(ncell), 0) FROM dbstat WHERE name = ? AND pagetype = 'leaf'",
            (index,),
        ).fetchone()
    return int(count)


async def test_the_deadline_keepers_indexes_hold_only_the_items_it_may_claim(
    engine: AsyncEngine, database_url: str
) -> None:
    sessions = session_factory(engine)
    psb, um = OWNERS
    await _seed(
        sessions,
        [
            _item("r1", "overdue", psb, Outcome.pending, -1),
            _item("r1", "soon", psb, Outcome.pending, 2),
            _item("r1", "undated", um, Outcome.pending, None),
            _item("r1", "granted", psb, Outcome.granted, 2),
            _item("r1", "denied", um, Outcome.denied, -1),
            *(_item("r2", f"auto-{n}", um, Outcome.granted, None) for n in range(20)),
        ],
    )
    path = sqlite_file(database_url)
    escalate, remind = "ix_access_request_feeds_to_escalate", "ix_access_request_feeds_to_remind"
    if path is not None:
        # only the three pending items; none of the 22 decided ones
        assert (_index_entries(path, escalate), _index_entries(path, remind)) == (3, 3)

    keeper = DeadlineKeeper(NotificationTuning(), sessions, postgres=path is None)
    with statements_run(engine) as statements:
        done = await keeper.run_once(utcnow())

    assert (done["escalated"], done["due_soon"]) == (1, 1)
    async with sessions() as session:
        items = {item.feed_id: item for item in await session.scalars(select(AccessRequestFeed))}
    assert {feed for feed, item in items.items() if item.escalated_at} == {"overdue"}
    assert {feed for feed, item in items.items() if item.due_soon_at} == {"soon"}
    # a second round finds nothing more to claim
    assert await keeper.run_once(utcnow()) == {"escalated": 0, "due_soon": 0, "expiring": 0}
    claims = [(sql, params) for sql, params in statements if "access_request_feeds" in sql]
    scans = [(sql, params) for sql, params in claims if sql.lstrip().startswith("SELECT")]
    if path is None:
        # PostgreSQL plans these few rows as a scan; told not to, it must be able to take
        # each scan's index
        async with engine.connect() as connection:
            await connection.exec_driver_sql("SET enable_seqscan = off")
            for index, column in ((escalate, "escalated_at"), (remind, "due_soon_at")):
                ((sql, params),) = [
                    (s, p) for s, p in scans if f"{column} IS NULL" in s and "IN (" not in s
                ]
                explained = (await connection.exec_driver_sql(f"EXPLAIN {sql}", params)).all()
                assert any(index in line for (line,) in explained), explained
        return
    # a claimed item leaves its scan's index: what is left is the work still waiting
    assert (_index_entries(path, escalate), _index_entries(path, remind)) == (2, 2)
    for index, column in ((escalate, "escalated_at"), (remind, "due_soon_at")):
        ((sql, params),) = [
            (s, p) for s, p in scans if f"{column} IS NULL" in s and "IN (" not in s
        ]
        assert any(
            f"USING INDEX {index} (due_at" in line for line in sqlite_plan(path, sql, params)
        )
    for sql, params in claims:
        if sql.lstrip().startswith("UPDATE"):  # each claim by the primary key, not by a scan
            plan = sqlite_plan(path, sql, params)
            assert any("sqlite_autoindex_access_request_feeds_1" in line for line in plan), plan

    # a decision takes an item out of both
    async with sessions() as session:
        undated = await session.get(AccessRequestFeed, ("r1", "undated"))
        assert undated is not None
        undated.outcome = Outcome.granted.value
        await session.commit()
    assert (_index_entries(path, escalate), _index_entries(path, remind)) == (1, 1)


async def test_an_owners_inbox_seeks_its_items_request_by_request(
    engine: AsyncEngine, database_url: str
) -> None:
    """Not every item of the owner's department in that state, once per request walked."""
    sessions = session_factory(engine)
    psb, um = OWNERS
    await _seed(
        sessions,
        [
            _item("r1", "a", psb, Outcome.pending, 24),
            _item("r1", "b", um, Outcome.granted, None),
            _item("r2", "c", psb, Outcome.granted, None),
            _item("r3", "d", um, Outcome.pending, 24),
            _item("r4", "e", psb, Outcome.pending, 24),
            _item("r4", "f", psb, Outcome.denied, None),
        ],
    )
    owner = Principal("owner", psb, frozenset({Role.dept_admin}))
    with statements_run(engine) as statements:
        async with sessions() as session:
            pending = await list_access_requests(
                session, owner, status="pending", as_owner=True, before=None, limit=50
            )
            every = await list_access_requests(
                session, owner, status=None, as_owner=True, before=None, limit=50
            )

    def items(page: list[Any]) -> dict[str, list[str]]:
        return {answer.id: sorted(item.feed_id for item in answer.feeds) for answer in page}

    assert items(pending) == {"r1": ["a"], "r4": ["e", "f"]}
    assert items(every) == {"r1": ["a"], "r2": ["c"], "r4": ["e", "f"]}
    path = sqlite_file(database_url)
    if path is None:
        return
    asked = [(sql, params) for sql, params in statements if "FROM access_request_feeds" in sql]
    assert len(asked) == 4  # each page: which requests, then their items of this owner
    for sql, params in asked:
        plan = sqlite_plan(path, sql, params)
        seeks = "ix_access_request_feeds_owner_request (owner_department=? AND request_id=?"
        assert any(seeks in line for line in plan), (sql, plan)


async def test_a_departments_requests_and_grants_are_read_newest_first_by_their_index(
    engine: AsyncEngine, database_url: str
) -> None:
    """A page of a department's requests or grants, in order from the index: not all of the
    department's history read and sorted for each page."""
    sessions = session_factory(engine)
    psb, um = OWNERS
    await _seed(sessions, [_item("r0", "a", psb, Outcome.granted, None)])
    now = utcnow()
    async with sessions() as session:
        for n in range(1, 7):
            request = _request(f"r{n}")
            request.created_at = now - timedelta(minutes=n)
            session.add(request)
        await session.flush()
        for n in range(1, 7):
            grant = _grant(f"g{n}", timedelta(hours=1))
            grant.request_id, grant.created_at = f"r{n}", now - timedelta(minutes=n)
            grant.owner_department = psb if n % 2 else um
            session.add(grant)
        await session.commit()
    requester = Principal("someone", REQUESTER, frozenset({Role.requester}))
    owner = Principal("owner", psb, frozenset({Role.dept_admin}))
    with statements_run(engine) as statements:
        async with sessions() as session:
            requests = await list_access_requests(
                session, requester, status=None, as_owner=False, before=None, limit=3
            )
            held = await list_grants(session, requester, active_only=True, as_owner=False, limit=4)
            given = await list_grants(session, owner, active_only=False, as_owner=True, limit=2)

    assert [request.id for request in requests] == ["r0", "r1", "r2"]
    assert [grant.id for grant in held] == ["g1", "g2", "g3", "g4"]
    assert [grant.id for grant in given] == ["g1", "g3"]
    path = sqlite_file(database_url)
    if path is None:
        return
    pages = [
        (sql, params)
        for sql, params in statements
        if "ORDER BY access_requests.created_at" in sql or "ORDER BY grants.created_at" in sql
    ]
    assert len(pages) == 3
    for (sql, params), index in zip(
        pages,
        (
            "ix_access_requests_requester_created",
            "ix_grants_requester_created",
            "ix_grants_owner_created",
        ),
        strict=True,
    ):
        plan = sqlite_plan(path, sql, params)
        assert any(f"USING INDEX {index}" in line for line in plan), plan
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan  # a tie's order only
