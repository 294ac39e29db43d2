"""Writing liveness transitions back to the registry's feeds table.

A transition found by the heartbeat agent updates the feed's ``status`` and ``last_seen``,
bumps its ``revision`` and, in the same transaction, adds a ``feedgrid.feed.status`` event to
the outbox, the way every registry change is published. Only a real change is written, so
replays and repeated detections are no-ops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry_api.db import create_engine, session_factory
from registry_api.feeds.documents import event_data
from registry_api.feeds.models import Feed
from registry_api.outbox.service import enqueue
from schemas.events import SCHEMA_FEED_METADATA_V1, CloudEvent, utcnow
from schemas.topics import FEED_METADATA

log = logging.getLogger("feedgrid.streams.registry")


@dataclass(frozen=True)
class LivenessChange:
    feed_id: str
    status: str
    changed_at: datetime
    last_seen: datetime | None


class RegistryStatusWriter:
    def __init__(
        self,
        database_url: str,
        sessions: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.database_url = database_url
        self._sessions = sessions
        self._own_engine: AsyncEngine | None = None

    def _session_factory(self) -> async_sessionmaker[AsyncSession]:
        if self._sessions is None:
            self._own_engine = create_engine(self.database_url)
            self._sessions = session_factory(self._own_engine)
        return self._sessions

    async def close(self) -> None:
        if self._own_engine is not None:
            await self._own_engine.dispose()
            self._own_engine = None
            self._sessions = None

    async def write(self, changes: Sequence[LivenessChange]) -> int:
        """Applies the changes in one transaction; returns how many feeds changed status."""
        if not changes:
            return 0
        changed = 0
        async with self._session_factory()() as session:
            for change in changes:
                values: dict[str, object] = {
                    "status": change.status,
                    "revision": Feed.revision + 1,
                    "updated_at": utcnow(),
                }
                if change.last_seen is not None:
                    values["last_seen"] = change.last_seen
                result = await session.execute(
                    update(Feed)
                    .where(Feed.id == change.feed_id, Feed.status != change.status)
                    .values(**values)
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    continue
                changed += 1
                row = (
                    (await session.execute(select(Feed.__table__).where(Feed.id == change.feed_id)))
                    .mappings()
                    .one()
                )
                enqueue(
                    session,
                    FEED_METADATA,
                    change.feed_id,
                    CloudEvent(
                        type="feedgrid.feed.status",
                        subject=change.feed_id,
                        dataschema=SCHEMA_FEED_METADATA_V1,
                        data=event_data(dict(row)),
                    ),
                )
            await session.commit()
        if changed:
            log.info("registry status updated for %d feeds", changed)
        return changed
