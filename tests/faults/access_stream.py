"""A long stream of access events for the fault tests, serialised fast, and how to check it.

Producing a million CloudEvents through the pydantic models would take longer than the test
itself, so only the first retrieval is built by the contract's models
(``tests.integration.streams_support.Retrieval``); every other event is that template with
its own id, time, subject and figures, encoded by orjson exactly as ``CloudEvent.to_bytes``
encodes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from schemas.settings import Settings
from tests.integration.streams_support import Retrieval, query

FEEDS = 500
DEPARTMENTS = 7
USERS = 97
SPACING = timedelta(milliseconds=30)
RETRIEVAL_SECONDS = 1.5
BYTES_BASE = 1_000
# The rollups the analytics read most; every table with retrieval and byte sums is checked.
KNOWN_ROLLUPS = {"usage_feeds_minute", "usage_departments_minute", "usage_departments_day"}


@dataclass(frozen=True)
class AccessStream:
    """Retrievals ``first`` .. ``first + retrievals - 1`` (two events each) from ``start``."""

    start: datetime
    retrievals: int
    first: int = 0

    @property
    def events(self) -> int:
        return 2 * self.retrievals

    @property
    def total_bytes(self) -> int:
        last = self.first + self.retrievals
        return sum(range(BYTES_BASE + self.first, BYTES_BASE + last))

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs: the feed id and the event, as the outbox relay publishes them."""
        started, ended = (
            event.model_dump(mode="json")
            for event in Retrieval(
                feed_id="feed-0",
                requester_department="dept-0",
                requester_user="user-0",
                grant_id="g-0",
                started_at=self.start,
                seconds=RETRIEVAL_SECONDS,
                bytes=BYTES_BASE,
            ).events()
        )
        dumps, option, new_id = orjson.dumps, orjson.OPT_UTC_Z, uuid.uuid4
        duration = timedelta(seconds=RETRIEVAL_SECONDS)
        for index in range(self.first, self.first + self.retrievals):
            feed = f"feed-{index % FEEDS}"
            user = f"user-{index % USERS}"
            grant = f"g-{index % FEEDS}"
            common = {
                "feed_id": feed,
                "requester_department": f"dept-{index % DEPARTMENTS}",
                "requester_user": user,
                "grant_id": grant,
                "token_id": f"tok-{grant}-{user}",
            }
            moment = self.start + SPACING * index
            key = feed.encode()
            for template, at, extra in (
                (started, moment, {}),
                (ended, moment + duration, {"bytes": BYTES_BASE + index}),
            ):
                event: dict[str, Any] = {
                    **template,
                    "id": str(new_id()),
                    "time": at,
                    "subject": feed,
                    "data": {**template["data"], **common, **extra},
                }
                yield key, dumps(event, option=option)


def stored_counts(settings: Settings) -> tuple[int, int]:
    """(rows, distinct event ids) in access_events."""
    rows, distinct = query(settings, "SELECT count(), uniqExact(event_id) FROM access_events")[0]
    return int(rows), int(distinct)


def rollup_totals(settings: Settings) -> dict[str, tuple[int, int]]:
    """(retrievals, bytes) summed over every rollup table (those with both columns). A table
    kept per department (``scope_department``: each event under its owner, and again under its
    requester when that is another department) is summed over its owners' rows: each event
    once."""
    tables = [
        str(row[0])
        for row in query(
            settings,
            "SELECT table FROM system.columns WHERE database = currentDatabase() "
            "AND name IN ('retrievals', 'bytes') AND table != 'access_events' "
            "GROUP BY table HAVING count() = 2 ORDER BY table",
        )
    ]
    assert KNOWN_ROLLUPS <= set(tables), tables
    scoped = {
        str(row[0])
        for row in query(
            settings,
            "SELECT table FROM system.columns WHERE database = currentDatabase() "
            "AND name = 'scope_department'",
        )
    }
    totals = {}
    for table in tables:
        owners_rows = " WHERE scope_department = owner_department" if table in scoped else ""
        retrievals, total_bytes = query(
            settings, f"SELECT sum(retrievals), sum(bytes) FROM {table}{owners_rows}"
        )[0]
        totals[table] = (int(retrievals), int(total_bytes))
    return totals


def assert_each_retrieval_counted_once(settings: Settings, streams: list[AccessStream]) -> None:
    """Every rollup holds the streams' retrievals and bytes exactly once."""
    expected = (
        sum(stream.retrievals for stream in streams),
        sum(stream.total_bytes for stream in streams),
    )
    totals = rollup_totals(settings)
    assert totals == dict.fromkeys(totals, expected)
