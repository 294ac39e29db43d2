"""A department's audit pages: the entries it requested or owns, in chain order, a page at a
time, read from the two department indexes in order up to the page's end (not every entry of
the department read and sorted for each page)."""

from __future__ import annotations

import itertools

from sqlalchemy.ext.asyncio import AsyncEngine

from registry_api.audit.service import AccessEvent, AuditFilters, list_entries, record_access_events
from registry_api.db import session_factory
from schemas.events import AccessEventData, EventType
from tests.integration.plan_support import sqlite_file, sqlite_plan, statements_run

DEPARTMENTS = ("lz-psb", "lz-tb", "lz-um", "lz-env")
REQUESTER_INDEX = "ix_audit_log_requester_department (requester_department=? AND rowid>?)"
OWNER_INDEX = "ix_audit_log_owner_department (owner_department=? AND rowid>?)"


async def test_a_departments_pages_hold_exactly_its_entries_in_chain_order(
    engine: AsyncEngine, database_url: str
) -> None:
    sessions = session_factory(engine)
    kinds = itertools.cycle(
        (EventType.ACCESS_REQUESTED, EventType.ACCESS_DECIDED, EventType.GRANT_ISSUED)
    )
    # every (requester, owner) pair of three departments, its own and none among them
    pairs = list(itertools.product(DEPARTMENTS[:3], (*DEPARTMENTS[:3], None))) * 6
    events = [
        AccessEvent(
            next(kinds),
            AccessEventData(
                feed_id=f"feed-{n}", requester_department=requester, owner_department=owner
            ),
            actor="someone",
        )
        for n, (requester, owner) in enumerate(pairs)
    ]
    async with sessions() as session:
        await record_access_events(session, events)
        await session.commit()
    async with sessions() as session:
        every = await list_entries(session, AuditFilters(limit=1000), visible_to_department=None)
    assert len(every.entries) == len(events)

    cases = [
        (DEPARTMENTS[0], AuditFilters(limit=7)),
        (DEPARTMENTS[1], AuditFilters(limit=5, event_type=EventType.ACCESS_DECIDED.value)),
        (DEPARTMENTS[3], AuditFilters(limit=5)),  # none of its own
        (DEPARTMENTS[0], AuditFilters(limit=4, department=DEPARTMENTS[2])),  # both involved
    ]
    with statements_run(engine) as statements:
        for department, filters in cases:
            involved = {department, filters.department or department}
            wanted = [
                entry.seq
                for entry in every.entries
                if all(d in (entry.requester_department, entry.owner_department) for d in involved)
                and filters.event_type in (None, entry.event_type)
            ]
            got: list[int] = []
            after = 0
            async with sessions() as session:
                while True:
                    page = await list_entries(
                        session,
                        AuditFilters(**{**filters.__dict__, "after_seq": after}),
                        visible_to_department=department,
                    )
                    assert len(page.entries) <= filters.limit
                    got += [entry.seq for entry in page.entries]
                    if page.next_after_seq is None:
                        break
                    after = page.next_after_seq
            assert got == wanted, (department, filters)
            assert len(wanted) > filters.limit or department == DEPARTMENTS[3]  # several pages

    path = sqlite_file(database_url)
    if path is None:
        return
    pages = [(sql, params) for sql, params in statements if "FROM audit_log" in sql]
    for sql, params in pages:
        plan = sqlite_plan(path, sql, params)
        assert not any("MULTI-INDEX OR" in line for line in plan), plan
        if "event_type" not in sql:
            assert any(REQUESTER_INDEX in line for line in plan), plan
            assert any(OWNER_INDEX in line for line in plan), plan
