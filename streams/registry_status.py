"""Writing liveness transitions back to the registry's feeds table.

The heartbeat agent finds transitions the registry cannot see by itself, chiefly a feed going
offline because its heartbeats stopped. Each one is written the way the registry writes its
own status changes (``registry_api.feeds.heartbeats``): ``status`` set, ``last_seen`` moved
forward only, ``revision`` bumped, and a ``feedgrid.feed.status`` event with the full state
added to the outbox in the same transaction. Only a real change is written, so replays and
repeated detections are no-ops. In the embedded process the API's feed index is told too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry_api.db import create_engine, session_factory
from registry_api.feeds.documents import event_data
from registry_api.feeds.events import FEED_STATUS, outbox_row
from registry_api.feeds.models import feeds_table
from registry_api.feeds.service import load_rows
from registry_api.outbox.service import enqueue_many

log = logging.getLogger("feedgrid.streams.registry")

feeds = feeds_table
StatusListener = Callable[[Mapping[str, Any]], None]


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
        on_status: StatusListener | None = None,
    ) -> None:
        self.database_url = database_url
        self.on_status = on_status
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
        changed: list[str] = []
        async with self._session_factory()() as session:
            for change in changes:
                values: dict[str, Any] = {"status": change.status, "revision": feeds.c.revision + 1}
                if change.last_seen is not None:
                    values["last_seen"] = case(
                        (feeds.c.last_seen.is_(None), change.last_seen),
                        (feeds.c.last_seen < change.last_seen, change.last_seen),
                        else_=feeds.c.last_seen,
                    )
                result = await session.execute(
                    update(feeds)
                    .where(
                        feeds.c.id == change.feed_id,
                        feeds.c.status != change.status,
                        feeds.c.retired_at.is_(None),
                    )
                    .values(**values)
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    changed.append(change.feed_id)
            rows = await load_rows(session, changed)
            await enqueue_many(
                session, [outbox_row(FEED_STATUS, rows[feed_id]) for feed_id in changed]
            )
            await session.commit()
        if self.on_status is not None:
            for feed_id in changed:
                self.on_status(event_data(rows[feed_id]))
        if changed:
            log.info("registry status updated for %d feeds", len(changed))
        return len(changed)
