"""SQLite's WAL checkpoints, off the request path.

In WAL mode SQLite appends every committed page to the write-ahead log and copies the log back
into the database file in a checkpoint. By default the connection whose commit takes the log
past 1,000 pages runs that checkpoint itself, before its commit returns: an access request
for a hundred feeds writes about 1.5 MB of log (its ~300 audit links and their index pages),
so every few requests one of them paid tens of milliseconds for everybody's pages (measured:
commit p50 14 ms, p95 60 ms with it; 4 ms and 12-20 ms without).

Here a background task checkpoints every ``CHECKPOINT_SECONDS`` (PASSIVE: it never waits for
or blocks readers and writers; the copying runs in the driver's thread, in SQLite's C code,
without the GIL), and the commit-time checkpoint stays as a safety net
(``db.SQLITE_AUTOCHECKPOINT_PAGES``).

What the task cannot do is restart the log: SQLite writes from the log's start again only
when a writer begins after a checkpoint copied every frame, and under writes back to back
(sequential access requests, ~40 a second) one always commits while the checkpoint runs.
The log then grows to the safety net, and the commit that crosses it checkpoints (~145 ms
with its fsyncs, measured) before the next writer restarts the log: once a second at that
rate. A restart forced by this task would hold the writers' turn as long (the fsyncs); a
safety net four times higher cut the tail in process but moved nothing measurable in
``bench_access``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.polling import refresh_every

log = logging.getLogger("feedgrid.db.checkpoints")

CHECKPOINT_SECONDS = 0.5

CHECKPOINTS = Counter(
    "feedgrid_sqlite_wal_checkpoints_total",
    "Background checkpoints of the registry's SQLite write-ahead log",
)
LOG_PAGES = Gauge(
    "feedgrid_sqlite_wal_pages",
    "Pages in the registry's SQLite write-ahead log at the last background checkpoint",
)
LAGGING_PAGES = Gauge(
    "feedgrid_sqlite_wal_pages_not_checkpointed",
    "Pages of the write-ahead log the last background checkpoint could not copy yet "
    "(still read by an open transaction)",
)


class WalCheckpointer:
    """Checkpoints the registry's SQLite database in the background (a no-op elsewhere)."""

    def __init__(self, engine: AsyncEngine, *, every_seconds: float = CHECKPOINT_SECONDS):
        self.engine = engine
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None
        # Held while a checkpoint runs: stopping waits for it, so the loop is never cancelled
        # inside the driver call (the pool would then log a failed reset at every shutdown).
        self._running = asyncio.Lock()

    async def start(self) -> None:
        if self.engine.dialect.name != "sqlite":
            return
        self._task = asyncio.create_task(
            refresh_every(
                self.every_seconds, self.checkpoint, what="the SQLite WAL checkpoint", log=log
            ),
            name="sqlite-wal-checkpoints",
        )

    async def stop(self) -> None:
        if self._task is not None:
            async with self._running:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def checkpoint(self) -> tuple[int, int]:
        """One PASSIVE checkpoint: (pages in the log, pages copied to the database)."""
        async with self._running, self.engine.connect() as connection:
            row = (await connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")).one()
        _busy, pages, copied = (int(value) for value in row)
        CHECKPOINTS.inc()
        LOG_PAGES.set(max(pages, 0))
        LAGGING_PAGES.set(max(pages - copied, 0))
        return pages, copied
