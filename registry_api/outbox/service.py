"""Writing events to the outbox inside the caller's transaction."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.outbox.models import OutboxMessage
from schemas.events import CloudEvent, utcnow


def enqueue(session: AsyncSession, topic_suffix: str, key: str, event: CloudEvent) -> None:
    """Adds the event to the session; it is published only if the transaction commits."""
    session.add(
        OutboxMessage(topic=topic_suffix, key=key, payload=event.to_bytes(), created_at=utcnow())
    )


async def enqueue_many(session: AsyncSession, rows: list[tuple[str, str, CloudEvent]]) -> None:
    """Bulk variant for imports: one INSERT for many events, same transaction."""
    if not rows:
        return
    now = utcnow()
    await session.execute(
        insert(OutboxMessage),
        [
            {"topic": topic, "key": key, "payload": event.to_bytes(), "created_at": now}
            for topic, key, event in rows
        ],
    )
