"""Liveness reports from gateways and devices: batches of (feed, status, seen_at).

Each accepted report becomes a ``feedgrid.heartbeat`` event on the heartbeats topic. The
newest report of a feed sets its ``status`` and ``last_seen``; a change of status bumps the
feed's revision (not its version: editors' If-Match stays valid) and emits a
``feedgrid.feed.status`` event with the full state on the feed-metadata topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.feeds.events import FEED_STATUS, outbox_row
from registry_api.feeds.models import feeds_table
from registry_api.feeds.service import load_rows, record_of
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.principal import Principal
from registry_api.outbox.service import enqueue_many
from schemas.events import (
    HEARTBEAT_EVENT_TYPE,
    SCHEMA_HEARTBEAT_V1,
    CloudEvent,
    HeartbeatData,
    utcnow,
)
from schemas.feeds import HeartbeatBatch, HeartbeatReject, HeartbeatResult
from schemas.topics import HEARTBEATS

feeds = feeds_table
CLOCK_SKEW = timedelta(minutes=5)
LOOKUP_CHUNK = 400


async def _light_rows(session: AsyncSession, feed_ids: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for begin in range(0, len(feed_ids), LOOKUP_CHUNK):
        chunk = feed_ids[begin : begin + LOOKUP_CHUNK]
        statement = select(
            feeds.c.id, feeds.c.owner, feeds.c.status, feeds.c.last_seen, feeds.c.retired_at
        ).where(feeds.c.id.in_(chunk))
        found.update({row.id: row for row in (await session.execute(statement)).all()})
    return found


def _heartbeat_event(feed_id: str, status: str, seen_at: datetime, reporter: str) -> CloudEvent:
    data = HeartbeatData(feed_id=feed_id, status=status, seen_at=seen_at, reporter=reporter)  # type: ignore[arg-type]
    return CloudEvent(
        type=HEARTBEAT_EVENT_TYPE,
        subject=feed_id,
        dataschema=SCHEMA_HEARTBEAT_V1,
        data=data.model_dump(mode="json"),
    )


async def record_heartbeats(
    session: AsyncSession, index: FeedIndex, principal: Principal, batch: HeartbeatBatch
) -> HeartbeatResult:
    now = utcnow()
    reporter = batch.reporter or principal.subject
    known = await _light_rows(session, sorted({item.feed_id for item in batch.items}))
    rejected: list[HeartbeatReject] = []
    events: list[tuple[str, str, CloudEvent]] = []
    latest: dict[str, tuple[datetime, str]] = {}
    for position, item in enumerate(batch.items):
        row = known.get(item.feed_id)
        seen_at = item.seen_at or now
        if seen_at.tzinfo is None:
            seen_at = seen_at.replace(tzinfo=now.tzinfo)
        problem = None
        if row is None:
            problem = "no such feed"
        elif not (principal.is_city_admin or principal.department == row.owner):
            problem = f"feed belongs to {row.owner}; a gateway reports its own department's feeds"
        elif row.retired_at is not None:
            problem = "the feed is retired"
        elif seen_at > now + CLOCK_SKEW:
            problem = "seen_at is in the future"
        if problem:
            rejected.append(HeartbeatReject(index=position, feed_id=item.feed_id, message=problem))
            continue
        events.append(
            (
                HEARTBEATS,
                item.feed_id,
                _heartbeat_event(item.feed_id, item.status, seen_at, reporter),
            )
        )
        newest = latest.get(item.feed_id)
        if newest is None or seen_at >= newest[0]:
            latest[item.feed_id] = (seen_at, item.status)

    seen_updates: list[dict[str, Any]] = []
    status_changed: list[str] = []
    for feed_id, (seen_at, status) in latest.items():
        row = known[feed_id]
        if row.last_seen is not None and seen_at < row.last_seen:
            continue  # an older report than the one we have: an event, not a state change
        changed = status != row.status
        seen_updates.append(
            {
                "b_id": feed_id,
                "b_last_seen": seen_at,
                "b_status": status,
                "b_increment": 1 if changed else 0,
            }
        )
        if changed:
            status_changed.append(feed_id)
    if seen_updates:
        await session.execute(
            update(feeds)
            .where(feeds.c.id == bindparam("b_id"))
            .values(
                last_seen=bindparam("b_last_seen"),
                status=bindparam("b_status"),
                revision=feeds.c.revision + bindparam("b_increment"),
            ),
            seen_updates,
        )
    changed_rows: dict[str, Mapping[Any, Any]] = {}
    if status_changed:
        changed_rows = await load_rows(session, status_changed)
        events += [outbox_row(FEED_STATUS, changed_rows[feed_id]) for feed_id in status_changed]
    await enqueue_many(session, events)
    await session.commit()
    if changed_rows:
        index.apply(record_of(row) for row in changed_rows.values())
    return HeartbeatResult(
        accepted=len(batch.items) - len(rejected),
        status_changed=len(status_changed),
        rejected=rejected,
    )
