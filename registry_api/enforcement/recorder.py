"""Sessions the media servers opened under a grant, written in batches from the hooks.

A play hook must answer in milliseconds: it hands the session here and answers; every
``hook_event_flush_seconds`` one transaction inserts the sessions opened and deletes those the
stop hooks reported ended. Sessions on a server with no control API configured are not kept:
nothing could cut them (``feedgrid_sessions_uncuttable_total`` counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter
from sqlalchemy import and_, delete, or_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.db import writes_in_turn
from registry_api.enforcement.models import GrantSession

log = logging.getLogger("feedgrid.enforcement.recorder")

RECORDED = Counter(
    "feedgrid_sessions_recorded_total", "Play sessions recorded for their grant", ["kind"]
)
UNCUTTABLE = Counter(
    "feedgrid_sessions_uncuttable_total",
    "Play sessions not recorded: no control API is configured for their media server",
    ["kind"],
)
MAX_PENDING = 100_000

REOPENED_COLUMNS = (
    "grant_id",
    "grant_ends_at",
    "app",
    "stream",
    "protocol",
    "client_ip",
    "opened_at",
    "cut_reason",
    "attempts",
    "next_attempt_at",
    "last_error",
    "set_aside_at",
)

SessionKey = tuple[str, str, str]  # kind, server, the server's session id


@dataclass(frozen=True)
class OpenedSession:
    kind: str
    server: str
    session_id: str
    grant_id: str
    grant_ends_at: datetime
    opened_at: datetime
    app: str | None = None
    stream: str | None = None
    protocol: str | None = None
    client_ip: str | None = None

    @property
    def key(self) -> SessionKey:
        return (self.kind, self.server, self.session_id)

    def row(self) -> dict[str, object]:
        return {
            "id": uuid.uuid4().hex,
            "grant_id": self.grant_id,
            "grant_ends_at": self.grant_ends_at,
            "kind": self.kind,
            "server": self.server,
            "session_id": self.session_id[:200],
            "app": (self.app or "")[:64] or None,
            "stream": (self.stream or "")[:300] or None,
            "protocol": (self.protocol or "")[:16] or None,
            "client_ip": (self.client_ip or "")[:64] or None,
            "opened_at": self.opened_at,
            "cut_reason": None,
            "attempts": 0,
            "next_attempt_at": None,
            "last_error": None,
            "set_aside_at": None,
        }


class SessionRecorder:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        flush_seconds: float,
        cuttable: Callable[[OpenedSession], bool],
        on_written: Callable[[list[OpenedSession]], None],
    ) -> None:
        self.sessions = sessions
        self.flush_seconds = flush_seconds
        self.cuttable = cuttable
        self.on_written = on_written
        self._opened: dict[SessionKey, OpenedSession] = {}
        self._closed: set[SessionKey] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def opened(self, session: OpenedSession) -> None:
        if not self.cuttable(session):
            UNCUTTABLE.labels(session.kind).inc()
            return
        if len(self._opened) >= MAX_PENDING:
            return  # the database is away; the grant check still refuses after revocation
        self._closed.discard(session.key)
        self._opened[session.key] = session
        RECORDED.labels(session.kind).inc()

    def closed(self, kind: str, server: str, session_id: str) -> None:
        key = (kind, server, session_id[:200])
        if self._opened.pop(key, None) is None and len(self._closed) < MAX_PENDING:
            self._closed.add(key)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="session-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database may be away: the next flush retries
                log.warning("cannot record play sessions yet: %s", error)

    async def flush(self) -> None:
        async with self._lock:
            opened, self._opened = self._opened, {}
            closed, self._closed = self._closed, set()
            if not (opened or closed):
                return
            try:
                await self._write(list(opened.values()), closed)
            except BaseException:
                # Put them back for the next flush (newer news about a session wins).
                self._opened = {**opened, **self._opened}
                self._closed |= closed
                raise
        if opened:
            self.on_written(list(opened.values()))

    async def _write(self, opened: list[OpenedSession], closed: set[SessionKey]) -> None:
        # In turn with the process's other writers (SQLite): see db.writes_in_turn.
        async with self.sessions() as session, writes_in_turn(session, "play_sessions"):
            if opened:
                rows = [item.row() for item in opened]
                # The server's word on a session id is the truth now: a server that restarted
                # reuses ids (nginx-rtmp counts clientids from 1), and a row left by a session
                # whose end was never reported must not hide the new one.
                insert = (
                    postgresql_insert(GrantSession)
                    if session.bind.dialect.name == "postgresql"
                    else sqlite_insert(GrantSession)
                )
                renewed = {column: insert.excluded[column] for column in REOPENED_COLUMNS}
                await session.execute(
                    insert.on_conflict_do_update(
                        index_elements=["kind", "server", "session_id"], set_=renewed
                    ),
                    rows,
                )
            for chunk in _chunks(sorted(closed), 300):
                await session.execute(
                    delete(GrantSession).where(
                        or_(
                            *(
                                and_(
                                    GrantSession.kind == kind,
                                    GrantSession.server == server,
                                    GrantSession.session_id == session_id,
                                )
                                for kind, server, session_id in chunk
                            )
                        )
                    )
                )
            await session.commit()


def _chunks(items: list[SessionKey], size: int) -> list[list[SessionKey]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
