"""Retrieval events from media-server hooks, written in batches.

A hook must answer in milliseconds, thousands of times a second; one transaction per decision
would make the registry database the bottleneck (and serialize on the audit chain head). The
hook hands its event here and answers; every ``hook_event_flush_seconds`` (or sooner when a
batch fills) one transaction appends the whole batch to the audit chain and the outbox.
Events waiting here when the process dies are lost: that is the price of the fast path, and
the window is the flush interval. Stopping the process flushes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.audit.service import AccessEvent, record_access_events

log = logging.getLogger("feedgrid.audit.writer")

WRITTEN = Counter(
    "feedgrid_hook_events_written_total", "Hook access events written to the audit log"
)
WAITING = Gauge("feedgrid_hook_events_waiting", "Hook access events waiting for their batch")
DROPPED = Counter("feedgrid_hook_events_dropped_total", "Hook access events dropped (buffer full)")

MAX_WAITING = 200_000


class BufferedAccessEvents:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        flush_seconds: float,
        batch_size: int,
        on_written: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessions = sessions
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.on_written = on_written
        self._waiting: deque[AccessEvent] = deque()
        self._batch_full = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def add(self, event: AccessEvent) -> None:
        if len(self._waiting) >= MAX_WAITING:
            DROPPED.inc()
            log.error("hook event buffer is full; dropping an event (is the database down?)")
            return
        self._waiting.append(event)
        if len(self._waiting) >= self.batch_size:
            self._batch_full.set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hook-event-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            # No relay wake-up here: the relay is being stopped too, and waking a task while it
            # is cancelled can swallow the cancellation (asyncio.wait_for in Python 3.11).
            await self.flush(notify=False)

    async def flush(self, *, notify: bool = True) -> int:
        """Writes everything waiting now; returns how many events were written."""
        written = 0
        async with self._write_lock:
            while self._waiting:
                batch = [
                    self._waiting.popleft() for _ in range(min(self.batch_size, len(self._waiting)))
                ]
                try:
                    async with self.sessions() as session:
                        await record_access_events(session, batch, cooperative=True)
                        await session.commit()
                except BaseException:
                    self._waiting.extendleft(reversed(batch))
                    raise
                written += len(batch)
                WRITTEN.inc(len(batch))
        WAITING.set(len(self._waiting))
        if written and notify:
            self.on_written()
        return written

    async def _run(self) -> None:
        backoff = self.flush_seconds
        while True:
            self._batch_full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await self._batch_full.wait()
            try:
                await self.flush()
                backoff = self.flush_seconds
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "cannot write hook events yet (%d waiting): %s", len(self._waiting), error
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
