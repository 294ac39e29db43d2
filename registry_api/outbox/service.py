"""Writing events to the outbox inside the caller's transaction: the one place outbox rows
are built. An event is a (topic suffix, key, CloudEvent) triple; the key keeps per-entity order
on the topic, and the row is published only if the caller's transaction commits."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.bulk_insert import DriverInsert, execute_insert, prepare_insert
from registry_api.outbox.models import OutboxMessage
from schemas.events import CloudEvent, utcnow

OutboxEvent = tuple[str, str, CloudEvent]

OUTBOX_TABLE = cast(Table, OutboxMessage.__table__)


def outbox_values(events: Iterable[OutboxEvent], *, created_at: datetime) -> list[dict[str, Any]]:
    """The outbox rows (column values) of the events, envelopes encoded."""
    return encoded_values(
        ((topic, key, event.to_bytes()) for topic, key, event in events), created_at=created_at
    )


def encoded_values(
    events: Iterable[tuple[str, str, bytes]], *, created_at: datetime
) -> list[dict[str, Any]]:
    """The outbox rows of events whose envelopes are encoded already (suffix, key, bytes)."""
    return [
        {"topic": topic, "key": key, "payload": payload, "created_at": created_at}
        for topic, key, payload in events
    ]


def enqueue(session: AsyncSession, topic_suffix: str, key: str, event: CloudEvent) -> None:
    """Adds the event to the session; it is published only if the transaction commits."""
    [values] = outbox_values([(topic_suffix, key, event)], created_at=utcnow())
    session.add(OutboxMessage(**values))


async def enqueue_many(session: AsyncSession, events: list[OutboxEvent]) -> None:
    """Bulk variant for imports: one INSERT for many events, same transaction."""
    if not events:
        return
    await session.execute(insert(OutboxMessage), outbox_values(events, created_at=utcnow()))


def prepare_enqueue(
    events: list[OutboxEvent], *, created_at: datetime, dialect: Dialect
) -> DriverInsert:
    """``enqueue_many`` prepared ahead, CPU only (see ``registry_api.bulk_insert``): for
    writers that must keep the event loop free while they encode thousands of events."""
    return prepare_insert(OUTBOX_TABLE, outbox_values(events, created_at=created_at), dialect)


def prepare_encoded(
    events: list[tuple[str, str, bytes]], *, created_at: datetime, dialect: Dialect
) -> DriverInsert:
    """``prepare_enqueue`` of events whose envelopes are encoded already (topic suffix, key,
    the CloudEvent's bytes)."""
    return prepare_insert(OUTBOX_TABLE, encoded_values(events, created_at=created_at), dialect)


async def enqueue_prepared(session: AsyncSession, prepared: DriverInsert) -> None:
    """Writes what :func:`prepare_enqueue` prepared, in the caller's transaction."""
    await execute_insert(session, prepared)
