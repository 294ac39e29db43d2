"""The deadline keeper: nobody waits on a person without someone chasing them.

Every API replica runs one. Each round (``FEEDGRID_NOTIFY_POLL_SECONDS``):

* **due soon**: pending feeds whose due time is within ``due_soon_hours`` are reminded to the
  owner (``request.due_soon``);
* **overdue**: pending feeds past their due time are escalated: ``escalated_at`` set, an
  ``access.escalated`` event per feed recorded (audit chain, outbox -> Kafka -> ClickHouse,
  where the decisions analytics count it), and ``request.overdue`` sent to the owner
  department's and the city's subscriptions;
* **grant expiring**: live grants ending within ``grant_expiry_warning_minutes`` are warned
  to the requester (``grant.expiring``), unless the whole grant was shorter than the window.

Each notice is claimed with ``UPDATE ... WHERE <column> IS NULL`` in the transaction that
writes its events and deliveries (on PostgreSQL the candidates are read ``FOR UPDATE SKIP
LOCKED``): it happens once, however many replicas run and however often they restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.access.models import (
    TO_ESCALATE,
    TO_REMIND,
    AccessRequest,
    AccessRequestFeed,
    Grant,
    GrantFeed,
)
from registry_api.access.records import event_data
from registry_api.audit.service import AccessEvent, record_access_events
from registry_api.db import unindexed
from registry_api.subscriptions.notify import Notification, listed, write_notifications
from schemas.events import EventType, utcnow
from schemas.settings import NotificationTuning
from schemas.subscriptions import NotificationKind

log = logging.getLogger("feedgrid.deadlines")

KEEPER = "deadline-keeper"
ESCALATION_REASON = "deadline_passed"
BATCH = 500

ESCALATIONS = Counter(
    "feedgrid_access_escalations_total",
    "Pending access decisions escalated at their due time (one per request and feed)",
)
NOTICES = Counter(
    "feedgrid_deadline_notices_total",
    "Reminders sent by the deadline keeper (due soon, grant expiring)",
    ["kind"],
)


class DeadlineKeeper:
    def __init__(
        self,
        tuning: NotificationTuning,
        sessions: async_sessionmaker[AsyncSession],
        *,
        postgres: bool,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self.tuning = tuning
        self.sessions = sessions
        self.postgres = postgres
        self.on_written = on_written
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deadline-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("deadline keeper round failed, retrying: %s", error)
            await asyncio.sleep(self.tuning.poll_seconds)

    async def run_once(self, now: datetime | None = None) -> dict[str, int]:
        """One round; returns how many feeds or grants each step handled."""
        now = now or utcnow()
        done = {
            "escalated": await self.escalate_overdue(now),
            "due_soon": await self.remind_due_soon(now),
            "expiring": await self.warn_expiring_grants(now),
        }
        if any(done.values()) and self.on_written is not None:
            self.on_written()
        return done

    def _locked(self, query: Any) -> Any:
        return query.with_for_update(skip_locked=True) if self.postgres else query

    async def _claim_items(
        self, session: AsyncSession, column: Any, waiting: str, due: Any, now: datetime
    ) -> list[tuple[str, str]]:
        """Items ``waiting`` (a partial index's condition: pending, ``column`` still empty)
        that match ``due``, claimed by setting ``column`` to ``now``. The condition is written
        as the index's own text, not with a bound ``'pending'``: PostgreSQL's generic plan
        of a prepared statement cannot tell a parameter meets a partial index's condition."""
        pending = (text(waiting), *due)
        candidates = (
            await session.execute(
                self._locked(
                    select(AccessRequestFeed.request_id, AccessRequestFeed.feed_id)
                    .where(*pending)
                    .order_by(AccessRequestFeed.due_at)
                    .limit(BATCH)
                )
            )
        ).all()
        if not candidates:
            return []
        claimed = await session.execute(
            update(AccessRequestFeed)
            .where(
                tuple_(AccessRequestFeed.request_id, AccessRequestFeed.feed_id).in_(
                    [tuple(row) for row in candidates]
                ),
                *pending,
            )
            .values({column.key: now})
            .returning(AccessRequestFeed.request_id, AccessRequestFeed.feed_id)
            .execution_options(synchronize_session=False)
        )
        return [(request_id, feed_id) for request_id, feed_id in claimed.all()]

    async def _items(
        self, session: AsyncSession, pairs: Sequence[tuple[str, str]]
    ) -> tuple[dict[str, AccessRequest], list[AccessRequestFeed]]:
        request_ids = {request_id for request_id, _ in pairs}
        requests = {
            request.id: request
            for request in await session.scalars(
                select(AccessRequest).where(AccessRequest.id.in_(request_ids))
            )
        }
        items = list(
            (
                await session.scalars(
                    select(AccessRequestFeed).where(
                        tuple_(AccessRequestFeed.request_id, AccessRequestFeed.feed_id).in_(
                            list(pairs)
                        )
                    )
                )
            ).all()
        )
        return requests, items

    async def escalate_overdue(self, now: datetime) -> int:
        async with self.sessions() as session:
            pairs = await self._claim_items(
                session,
                AccessRequestFeed.escalated_at,
                TO_ESCALATE,
                (AccessRequestFeed.due_at <= now,),
                now,
            )
            if not pairs:
                return 0
            requests, items = await self._items(session, pairs)
            events = [
                AccessEvent(
                    EventType.ACCESS_ESCALATED,
                    event_data(
                        requests[item.request_id],
                        item.feed_id,
                        item.owner_department,
                        item.actions,
                        decision="pending",
                        reason=ESCALATION_REASON,
                    ),
                    KEEPER,
                    occurred_at=now,
                )
                for item in items
            ]
            # The audit writer's listener turns these into request.overdue notifications.
            await record_access_events(session, events)
            await session.commit()
        ESCALATIONS.inc(len(events))
        log.info("escalated overdue access decisions", extra={"feeds": len(events)})
        return len(events)

    async def remind_due_soon(self, now: datetime) -> int:
        window = timedelta(hours=self.tuning.due_soon_hours)
        async with self.sessions() as session:
            pairs = await self._claim_items(
                session,
                AccessRequestFeed.due_soon_at,
                TO_REMIND,
                (AccessRequestFeed.due_at > now, AccessRequestFeed.due_at <= now + window),
                now,
            )
            if not pairs:
                return 0
            requests, items = await self._items(session, pairs)
            groups: dict[tuple[str, str], list[AccessRequestFeed]] = defaultdict(list)
            for item in items:
                groups[(item.request_id, item.owner_department or "")].append(item)
            notes = []
            for (request_id, owner), group in groups.items():
                request = requests[request_id]
                due = min(item.due_at for item in group if item.due_at is not None)
                notes.append(
                    Notification(
                        NotificationKind.request_due_soon,
                        (owner,),
                        {
                            "request_id": request_id,
                            "owner_department": owner,
                            "requester_department": request.requester_department,
                            "requester": request.requester,
                            "purpose": request.purpose,
                            "actions": list(request.actions),
                            "due_at": due.isoformat(),
                            **listed(item.feed_id for item in group),
                        },
                        occurred_at=now,
                    )
                )
            await write_notifications(session, notes)
            await session.commit()
        NOTICES.labels(NotificationKind.request_due_soon.value).inc(len(notes))
        return len(pairs)

    async def warn_expiring_grants(self, now: datetime) -> int:
        window = timedelta(minutes=self.tuning.grant_expiry_warning_minutes)
        ending = (
            unindexed(Grant.revoked_at).is_(None),  # by the window's index: not every grant
            Grant.expiry_warned_at.is_(None),
            Grant.valid_until > now,
            Grant.valid_until <= now + window,
        )
        async with self.sessions() as session:
            candidates = list(
                (
                    await session.scalars(
                        self._locked(select(Grant.id).where(*ending).limit(BATCH))
                    )
                ).all()
            )
            if not candidates:
                return 0
            claimed = list(
                (
                    await session.scalars(
                        update(Grant)
                        .where(Grant.id.in_(candidates), *ending)
                        .values(expiry_warned_at=now)
                        .returning(Grant.id)
                        .execution_options(synchronize_session=False)
                    )
                ).all()
            )
            grants = list((await session.scalars(select(Grant).where(Grant.id.in_(claimed)))).all())
            # A grant shorter than the window was never far from its end: no warning.
            warned = [grant for grant in grants if grant.valid_until - grant.valid_from > window]
            feeds: dict[str, list[str]] = defaultdict(list)
            if warned:
                rows = await session.execute(
                    select(GrantFeed.grant_id, GrantFeed.feed_id).where(
                        GrantFeed.grant_id.in_([grant.id for grant in warned])
                    )
                )
                for grant_id, feed_id in rows:
                    feeds[grant_id].append(feed_id)
            notes = [
                Notification(
                    NotificationKind.grant_expiring,
                    (grant.requester_department,),
                    {
                        "grant_id": grant.id,
                        "request_id": grant.request_id,
                        "requester_department": grant.requester_department,
                        "owner_department": grant.owner_department,
                        "actions": list(grant.actions),
                        "valid_until": grant.valid_until.isoformat(),
                        **listed(feeds[grant.id]),
                    },
                    occurred_at=now,
                )
                for grant in warned
            ]
            await write_notifications(session, notes)
            await session.commit()
        NOTICES.labels(NotificationKind.grant_expiring.value).inc(len(notes))
        return len(claimed)
