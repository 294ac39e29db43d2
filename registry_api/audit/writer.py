"""Retrieval events from media-server hooks, written in batches.

A hook must answer in milliseconds, thousands of times a second; one transaction per decision
would make the registry database the bottleneck (and serialize on the audit chain head). The
hook hands its event here and answers; every ``hook_event_flush_seconds`` (or sooner when a
batch fills) one transaction appends the whole batch to the audit chain and the outbox.
Events waiting here when the process dies are lost: that is the price of the fast path, and
the window is the flush interval. Stopping the process flushes them.

A batch that fails is retried while the failure is one time can cure (the database locked,
down, or unreachable). Any other failure is about the events themselves: the batch is split
in halves until the event(s) no transaction can take are found; those are refused (logged with
the reason, counted, kept in ``refused`` for inspection) and the rest are written. One bad
event must never hold back the audit of every retrieval after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter, Gauge
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.audit.service import AccessEvent, record_access_events
from registry_api.db import writes_in_turn
from schemas.events import utcnow

log = logging.getLogger("feedgrid.audit.writer")

WRITTEN = Counter(
    "feedgrid_hook_events_written_total", "Hook access events written to the audit log"
)
WAITING = Gauge("feedgrid_hook_events_waiting", "Hook access events waiting for their batch")
DROPPED = Counter("feedgrid_hook_events_dropped_total", "Hook access events dropped (buffer full)")
REFUSED = Counter(
    "feedgrid_hook_events_refused_total",
    "Hook access events the audit log could not take (set aside so the others are written)",
)

MAX_WAITING = 200_000
KEPT_REFUSALS = 1_000

# Failures of the database or the way to it, not of the events: waiting cures them.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy_errors.OperationalError,  # SQLite "database is locked", PostgreSQL going away
    sqlalchemy_errors.InterfaceError,
    sqlalchemy_errors.TimeoutError,  # no pooled connection in time
    sqlalchemy_errors.DisconnectionError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, sqlalchemy_errors.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, TRANSIENT_ERRORS)


@dataclass(frozen=True)
class RefusedEvent:
    event: AccessEvent
    reason: str
    at: datetime = field(default_factory=utcnow)


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
        self._in_flight = 0  # taken from the queue, not yet committed
        self.refused: deque[RefusedEvent] = deque(maxlen=KEPT_REFUSALS)
        self._batch_full = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def add(self, event: AccessEvent) -> None:
        if len(self._waiting) >= MAX_WAITING:
            DROPPED.inc()
            log.error("hook event buffer is full; dropping an event (is the database down?)")
            return
        self._waiting.append(event)
        WAITING.set(self.waiting)
        if len(self._waiting) >= self.batch_size:
            self._batch_full.set()

    @property
    def waiting(self) -> int:
        """Events not yet in the audit log: queued, or in a transaction not yet committed."""
        return len(self._waiting) + self._in_flight

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
        """Writes everything waiting now; returns how many events were written.

        Raises on a transient failure, with every unwritten event back at the front in order.
        """
        written = 0
        async with self._write_lock:
            try:
                while self._waiting:
                    count = min(self.batch_size, len(self._waiting))
                    batch = [self._waiting.popleft() for _ in range(count)]
                    self._in_flight = len(batch)
                    written += await self._write_setting_poison_aside(batch)
            finally:
                self._in_flight = 0
                WAITING.set(self.waiting)
                if written and notify:
                    self.on_written()
        return written

    async def _write_setting_poison_aside(self, batch: list[AccessEvent]) -> int:
        written = 0
        pending = [batch]  # slices still to write, the next one last
        while pending:
            part = pending.pop()
            try:
                await self._write(part)
            except Exception as error:
                if is_transient(error):
                    self._put_back(part, pending)
                    raise
                if len(part) > 1:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]
                else:
                    self._refuse(part[0], error)
                    self._in_flight -= 1
                continue
            except BaseException:  # cancelled mid-write: nothing of it is lost
                self._put_back(part, pending)
                raise
            written += len(part)
            self._in_flight -= len(part)
            WRITTEN.inc(len(part))
        return written

    async def _write(self, events: list[AccessEvent]) -> None:
        async with self.sessions() as session, writes_in_turn(session, "hook_events"):
            await record_access_events(session, events, cooperative=True)
            await session.commit()

    def _put_back(self, part: list[AccessEvent], pending: list[list[AccessEvent]]) -> None:
        unwritten = part + [event for later in reversed(pending) for event in later]
        self._waiting.extendleft(reversed(unwritten))
        self._in_flight = 0

    def _refuse(self, event: AccessEvent, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"[:500]
        self.refused.append(RefusedEvent(event, reason))
        REFUSED.inc()
        log.error(
            "hook event refused by the audit log, set aside: %s",
            reason,
            extra={"event_type": event.event_type, "feed_id": event.data.feed_id},
        )

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
                log.warning("cannot write hook events yet (%d waiting): %s", self.waiting, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
