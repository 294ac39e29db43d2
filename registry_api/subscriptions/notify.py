"""Notifications, written as delivery rows in the transaction of the change they tell of.

A change commits its webhook deliveries with it (one row per subscription and notification),
so a notification exists exactly when its change does: none lost when the process dies after
the commit, none sent for a change rolled back. The dispatcher sends them afterwards.

Access events arrive through the audit writer's listener (:func:`on_access_events`); feed
status changes from the liveness applier (:func:`on_feeds_status_changed`); due times and
grant ends from the deadline keeper.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
from prometheus_client import Counter
from sqlalchemy import Table, func, insert, or_, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.models import AccessRequestFeed, Grant, GrantFeed
from registry_api.audit.service import AccessEvent, PendingDue, RecordedEvent
from registry_api.bulk_insert import placeholders, prepare_insert
from registry_api.db import unindexed
from registry_api.driver_work import DriverCalls, DriverStatement, DriverWork
from registry_api.subscriptions.models import WebhookDelivery, WebhookSubscription
from schemas.access import Outcome, ReasonCode
from schemas.events import AccessEventData, EventType, utcnow
from schemas.subscriptions import DeliveryState, NotificationKind

# A notification names at most this many feeds (and says how many there are in all).
LISTED_FEEDS = 100
LISTED_GRANTS = 10  # grants named per feed of a feed.offline notice
OWNER_DECISIONS = frozenset(
    {
        ReasonCode.approved_by_owner.value,
        ReasonCode.denied_by_owner.value,
        ReasonCode.emergency_confirmed.value,
    }
)

NOTIFICATIONS = Counter(
    "feedgrid_webhook_notifications_total",
    "Webhook deliveries written (one per subscription and notification)",
    ["kind"],
)


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Notification:
    """Something to tell ``departments`` (and the city-wide subscriptions of its kind)."""

    kind: NotificationKind
    departments: tuple[str, ...]
    data: dict[str, Any]
    occurred_at: datetime = field(default_factory=utcnow)
    message_id: str = field(default_factory=new_message_id)

    def body(self) -> bytes:
        return orjson.dumps(
            {"type": self.kind.value, "timestamp": self.occurred_at, "data": self.data},
            option=orjson.OPT_UTC_Z,
        )


def listed(feed_ids: Iterable[str]) -> dict[str, Any]:
    ordered = sorted(set(feed_ids))
    return {"feed_ids": ordered[:LISTED_FEEDS], "feed_count": len(ordered)}


Subscription = tuple[Any, str | None, list[str]]  # id, department (None: city-wide), kinds


async def _subscriptions(session: AsyncSession, audiences: Iterable[str]) -> list[Subscription]:
    """The subscriptions of these departments and the city-wide ones."""
    rows = await session.execute(
        select(
            WebhookSubscription.id,
            WebhookSubscription.department_code,
            WebhookSubscription.kinds,
        ).where(
            or_(
                WebhookSubscription.department_code.in_(set(audiences)),
                WebhookSubscription.department_code.is_(None),
            )
        )
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def write_notifications(
    session: AsyncSession,
    notifications: Sequence[Notification],
    subscriptions: Sequence[Subscription] | None = None,
) -> int:
    """One delivery row per matching subscription, in the caller's transaction; returns how
    many were written. The caller commits. ``subscriptions``: those of (at least) every
    audience of the notifications, when the caller has read them already."""
    if not notifications:
        return 0
    if subscriptions is None:
        audiences = {code for note in notifications for code in note.departments}
        subscriptions = await _subscriptions(session, audiences)
    rows = _delivery_rows(notifications, subscriptions)
    if rows:
        await session.execute(insert(WebhookDelivery), rows)
    for row in rows:
        NOTIFICATIONS.labels(row["kind"]).inc()
    return len(rows)


def _delivery_rows(
    notifications: Sequence[Notification], subscriptions: Sequence[Subscription]
) -> list[dict[str, Any]]:
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for note in notifications:
        body = None
        for subscription_id, department, kinds in subscriptions:
            if note.kind.value not in kinds:
                continue
            if department is not None and department not in note.departments:
                continue
            body = body or note.body()
            rows.append(
                {
                    "subscription_id": subscription_id,
                    "message_id": note.message_id,
                    "kind": note.kind.value,
                    "payload": body,
                    "created_at": now,
                    "state": DeliveryState.pending.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                }
            )
    return rows


def _writing_deliveries(rows: list[dict[str, Any]], dialect: Dialect) -> DriverWork[None]:
    """Driver work writing the delivery rows of subscriptions that still exist when it runs:
    the subscriptions were read before the writer's turn, and one deleted meanwhile would
    fail the whole change on its foreign key."""
    table = cast(Table, WebhookDelivery.__table__)
    subscription_ids = sorted({str(row["subscription_id"]) for row in rows})
    quote = dialect.identifier_preparer.quote
    existing = DriverStatement(
        f"SELECT {quote('id')} FROM "
        f"{dialect.identifier_preparer.format_table(WebhookSubscription.__table__)} "
        f"WHERE {quote('id')} IN ({placeholders(dialect.paramstyle, len(subscription_ids))})",
        tuple(subscription_ids),
    )

    def write(calls: DriverCalls) -> None:
        still = {str(found) for (found,) in calls.execute(existing)}
        kept = [row for row in rows if str(row["subscription_id"]) in still]
        if kept:
            calls.executemany(prepare_insert(table, kept, dialect))
        for row in kept:
            NOTIFICATIONS.labels(row["kind"]).inc()

    return write


# ---------------------------------------------------------------------- access events


async def _due_times(
    session: AsyncSession, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], datetime | None]:
    """The earliest due time of each (request, owner)'s still pending feeds: the requests'
    items found by the primary key, not every pending item by the outcome's index."""
    wanted = set(keys)
    if not wanted:
        return {}
    rows = await session.execute(
        select(
            AccessRequestFeed.request_id,
            AccessRequestFeed.owner_department,
            func.min(AccessRequestFeed.due_at),
        )
        .where(
            AccessRequestFeed.request_id.in_({request for request, _ in wanted}),
            unindexed(AccessRequestFeed.outcome) == Outcome.pending.value,
        )
        .group_by(AccessRequestFeed.request_id, AccessRequestFeed.owner_department)
    )
    return {(request, owner): due for request, owner, due in rows if (request, owner) in wanted}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


NOTABLE_TYPES = (EventType.ACCESS_DECIDED, EventType.ACCESS_ESCALATED, EventType.GRANT_REVOKED)


def _is_notable(event: RecordedEvent) -> bool:
    """Whether a notification may be about the event, from its raw payload: a request for a
    hundred feeds validates only the payloads that matter here, and only when someone is
    subscribed."""
    if event.event_type not in NOTABLE_TYPES:
        return False
    if isinstance(event, AccessEvent) or event.event_type != EventType.ACCESS_DECIDED:
        return True
    return bool(
        event.data["decision"] == Outcome.pending.value
        or event.data["reason"] == ReasonCode.emergency_live_access.value
        or event.data["reason"] in OWNER_DECISIONS
    )


def _as_access_event(event: RecordedEvent) -> AccessEvent:
    """The event with its data as a model (validated here for an already encoded one)."""
    if isinstance(event, AccessEvent):
        return event
    data = AccessEventData.model_validate(event.data)
    return AccessEvent(event.event_type, data, event.actor, event.event_id, event.occurred_at)


def _departments_of(event: RecordedEvent) -> tuple[str | None, str | None]:
    if isinstance(event, AccessEvent):
        return event.data.requester_department, event.data.owner_department
    return event.data.get("requester_department"), event.data.get("owner_department")


async def on_access_events(
    session: AsyncSession, events: Sequence[RecordedEvent], pending_due: PendingDue | None
) -> DriverWork[None] | None:
    """The audit writer's listener: the deliveries of access events that someone should hear
    of, as driver work for the transaction that records them. ``pending_due``: the due times
    of new requests' pending feeds (their rows are not written yet), else they are read."""
    notable = [event for event in events if _is_notable(event)]
    if not notable:
        return None
    audiences = {code for event in notable for code in _departments_of(event) if code}
    subscriptions = await _subscriptions(session, audiences)
    if not subscriptions:
        return None  # nobody to tell: nothing to validate, no due times to look up
    pending: dict[tuple[str, str], list[AccessEvent]] = defaultdict(list)
    review: dict[tuple[str, str], list[AccessEvent]] = defaultdict(list)
    overdue: dict[tuple[str, str], list[AccessEvent]] = defaultdict(list)
    decided: dict[str, list[AccessEvent]] = defaultdict(list)
    revoked: dict[str, list[AccessEvent]] = defaultdict(list)
    for recorded in notable:
        event = _as_access_event(recorded)
        data = event.data
        if event.event_type == EventType.ACCESS_DECIDED and data.request_id:
            if data.decision == Outcome.pending.value and data.owner_department:
                pending[(data.request_id, data.owner_department)].append(event)
            elif data.reason == ReasonCode.emergency_live_access.value and data.owner_department:
                # Granted at once for an emergency, waiting for the owner's review.
                review[(data.request_id, data.owner_department)].append(event)
            elif data.reason in OWNER_DECISIONS:
                decided[data.request_id].append(event)
        elif event.event_type == EventType.ACCESS_ESCALATED and data.request_id:
            if data.owner_department:
                overdue[(data.request_id, data.owner_department)].append(event)
        elif event.event_type == EventType.GRANT_REVOKED and data.grant_id:
            revoked[data.grant_id].append(event)
    if not (pending or review or overdue or decided or revoked):
        return None
    due = (
        pending_due if pending_due is not None else await _due_times(session, [*pending, *overdue])
    )
    notes: list[Notification] = []
    for kind, groups in (
        (NotificationKind.request_pending, pending),
        (NotificationKind.request_pending, review),
        (NotificationKind.request_overdue, overdue),
    ):
        for (request_id, owner), group in groups.items():
            first = group[0].data
            notes.append(
                Notification(
                    kind,
                    (owner,),
                    {
                        "request_id": request_id,
                        "owner_department": owner,
                        "requester_department": first.requester_department,
                        "requester": first.requester_user,
                        "purpose": first.purpose,
                        "actions": (first.action or "").split(",") if first.action else [],
                        "emergency": first.emergency,
                        "due_at": _iso(due.get((request_id, owner))),
                        **listed(event.data.feed_id for event in group),
                        "escalated": kind is NotificationKind.request_overdue,
                        # an emergency grant already in force, for the owner to confirm or deny
                        "review": groups is review,
                    },
                    occurred_at=group[0].occurred_at,
                )
            )
    for request_id, group in decided.items():
        first = group[0].data
        owners = sorted({event.data.owner_department or "" for event in group} - {""})
        outcomes: dict[str, list[str]] = defaultdict(list)
        for event in group:
            outcomes[event.data.decision or ""].append(event.data.feed_id)
        notes.append(
            Notification(
                NotificationKind.request_decided,
                (first.requester_department or "",),
                {
                    "request_id": request_id,
                    "requester_department": first.requester_department,
                    "owner_departments": owners,
                    "decided_by": group[0].actor,
                    "granted": listed(outcomes.get("granted", [])),
                    "denied": listed(outcomes.get("denied", [])),
                    "grant_ids": sorted({e.data.grant_id for e in group if e.data.grant_id}),
                },
                occurred_at=group[0].occurred_at,
            )
        )
    for grant_id, group in revoked.items():
        first = group[0].data
        notes.append(
            Notification(
                NotificationKind.grant_revoked,
                tuple(
                    code
                    for code in dict.fromkeys((first.requester_department, first.owner_department))
                    if code
                ),
                {
                    "grant_id": grant_id,
                    "request_id": first.request_id,
                    "requester_department": first.requester_department,
                    "owner_department": first.owner_department,
                    "revoked_by": group[0].actor,
                    "reason": first.reason,
                    "valid_until": _iso(first.grant_valid_until),
                    **listed(event.data.feed_id for event in group),
                },
                occurred_at=group[0].occurred_at,
            )
        )
    rows = _delivery_rows(notes, subscriptions)
    if not rows:
        return None
    return _writing_deliveries(rows, (await session.connection()).dialect)


# ---------------------------------------------------------------------- feed status


async def on_feeds_status_changed(
    session: AsyncSession, changed: Sequence[Mapping[Any, Any]]
) -> None:
    """The liveness applier's hook: feeds that went offline while a department holds a live
    grant on them. One notification per holding department (feeds listed, bounded)."""
    offline = [str(row["id"]) for row in changed if row.get("status") == "offline"]
    if not offline:
        return
    now = utcnow()
    holders: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    owners: dict[str, str] = {}
    for begin in range(0, len(offline), 1000):
        rows = await session.execute(
            select(GrantFeed.feed_id, Grant.id, Grant.requester_department, Grant.owner_department)
            .join(Grant, Grant.id == GrantFeed.grant_id)
            .where(
                GrantFeed.feed_id.in_(offline[begin : begin + 1000]),
                Grant.revoked_at.is_(None),
                Grant.valid_from <= now,
                Grant.valid_until > now,
            )
        )
        for feed_id, grant_id, requester, owner in rows:
            holders[requester][feed_id].add(grant_id)
            owners[feed_id] = owner
    notes = []
    for department, feeds in holders.items():
        feed_ids = sorted(feeds)
        for begin in range(0, len(feed_ids), LISTED_FEEDS):
            chunk = feed_ids[begin : begin + LISTED_FEEDS]
            notes.append(
                Notification(
                    NotificationKind.feed_offline,
                    (department,),
                    {
                        "requester_department": department,
                        "feeds": [
                            {
                                "feed_id": feed_id,
                                "owner_department": owners[feed_id],
                                "grant_ids": sorted(feeds[feed_id])[:LISTED_GRANTS],
                                "grant_count": len(feeds[feed_id]),
                            }
                            for feed_id in chunk
                        ],
                        "feed_count": len(feed_ids),
                    },
                    occurred_at=now,
                )
            )
    await write_notifications(session, notes)
