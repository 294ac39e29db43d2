"""The enforcer: cuts the sessions of revoked and ended grants, retrying with backoff.

What is due comes from durable state only, so nothing is lost when a process restarts:
- a revocation: the replica that revokes tells the enforcer at once; other replicas learn it
  from their revocation poll (``revocation_refresh_seconds``), and a process starting learns
  every live revoked grant from its first poll;
- a grant's end: rows whose ``grant_ends_at`` has passed, looked for every
  ``enforcement_poll_seconds``;
- a retry: rows whose ``next_attempt_at`` has come (also a cut whose replica died mid-way).
Each cut first takes a lease on its row (an UPDATE that only one replica wins), so replicas
never cut the same session together. A failure retries with exponential backoff up to
``enforcement_attempts`` tries, then the row is set aside with its reason, visible in
``/metrics`` and in ``GET /v1/grants/{id}/sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import httpx
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.access.models import Grant
from registry_api.access.revocation import GrantStates
from registry_api.db import rows_matched
from registry_api.enforcement.broker import BrokerAdmin
from registry_api.enforcement.control import (
    MEDIAMTX_KINDS,
    ControlFailure,
    CutOutcome,
    MediaServers,
    SessionToCut,
)
from registry_api.enforcement.models import GrantSession
from registry_api.enforcement.recorder import OpenedSession, SessionRecorder
from schemas.events import utcnow
from schemas.settings import Settings

log = logging.getLogger("feedgrid.enforcement")

CUTS = Counter(
    "feedgrid_enforcement_cuts_total",
    "Sessions of revoked or ended grants acted on, by outcome: cut, gone (ended before the "
    "cut), retry (failed, tried again later), set_aside (failed past the bound, or for good)",
    ["kind", "reason", "outcome"],
)
CUT_SECONDS = Histogram(
    "feedgrid_enforcement_cut_seconds",
    "Time one control API call took",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PENDING = Gauge(
    "feedgrid_enforcement_pending", "Sessions due for a cut at the last look (retries included)"
)
SET_ASIDE = Gauge("feedgrid_enforcement_set_aside", "Sessions whose cut was given up")
LOOP_ERRORS = Counter(
    "feedgrid_enforcement_errors_total", "Enforcer rounds that failed (the database away)"
)

BATCH = 500
PARALLEL_CUTS = 32
RECONCILE_SECONDS = 60.0


class Enforcer:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        grants: GrantStates,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.grants = grants
        self.http = httpx.AsyncClient(timeout=settings.enforcement_timeout_seconds)
        self.servers = MediaServers(settings.media_servers, self.http)
        self.broker = BrokerAdmin(settings) if settings.mqtt_admin_url else None
        self.recorder = SessionRecorder(
            sessions,
            flush_seconds=settings.hook_event_flush_seconds,
            cuttable=self._cuttable,
            on_written=self._recorded,
        )
        self._revoked: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(PARALLEL_CUTS)
        self._last_reconcile = 0.0
        grants.revocation_listeners.append(self.grant_revoked)

    # ------------------------------------------------------------------ being told

    def grant_revoked(self, grant_id: str) -> None:
        self._revoked.add(grant_id)
        self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def _cuttable(self, session: OpenedSession) -> bool:
        if session.kind == "mediamtx" and session.protocol not in MEDIAMTX_KINDS:
            return False  # HLS readers hold no session: each fetch is checked
        return self.servers.knows(session.kind, session.server)

    def _recorded(self, opened: list[OpenedSession]) -> None:
        """A session written after its grant was revoked (the revocation raced the flush)."""
        now = utcnow()
        for session in opened:
            if self.grants.is_revoked(session.grant_id) or session.grant_ends_at <= now:
                self.grant_revoked(session.grant_id)

    # ------------------------------------------------------------------ running

    async def start(self) -> None:
        if not self.settings.media_servers:
            log.info(
                "no media servers configured: play sessions are refused at their next "
                "check after a revocation but not cut (FEEDGRID_MEDIA_SERVERS)"
            )
        await self.recorder.start()
        self._task = asyncio.create_task(self._run(), name="enforcer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.recorder.stop()
        await self.http.aclose()

    async def _run(self) -> None:
        backoff = self.settings.enforcement_poll_seconds
        while True:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wakeup.wait()
            try:
                await self.cut_due()
                backoff = self.settings.enforcement_poll_seconds
            except asyncio.CancelledError:
                raise
            except Exception as error:
                LOOP_ERRORS.inc()
                log.warning("enforcer cannot look for sessions to cut yet: %s", error)
                backoff = min(backoff * 2, 10.0)

    # ------------------------------------------------------------------ what is due

    async def cut_due(self) -> int:
        """Cuts every session due now; returns how many were acted on."""
        now = utcnow()
        revoked, self._revoked = self._revoked, set()
        try:
            due = await self._due(now, sorted(revoked))
        except BaseException:
            self._revoked |= revoked
            raise
        PENDING.set(len(due))
        if not due:
            return 0
        results = await asyncio.gather(*(self._cut_one(row, reason, now) for row, reason in due))
        return sum(results)

    async def _due(self, now: datetime, revoked: Sequence[str]) -> list[tuple[GrantSession, str]]:
        waiting = (GrantSession.set_aside_at.is_(None), GrantSession.next_attempt_at.is_(None))
        found: dict[str, tuple[GrantSession, str]] = {}
        async with self.sessions() as session:
            for start in range(0, len(revoked), BATCH):
                chunk = list(revoked[start : start + BATCH])
                rows = await session.scalars(
                    select(GrantSession).where(GrantSession.grant_id.in_(chunk), *waiting)
                )
                found.update({row.id: (row, "revoked") for row in rows})
            ended = await session.scalars(
                select(GrantSession).where(GrantSession.grant_ends_at <= now, *waiting).limit(BATCH)
            )
            found.update({row.id: (row, "expired") for row in ended})
            retries = await session.scalars(
                select(GrantSession)
                .where(
                    GrantSession.next_attempt_at <= now,
                    GrantSession.set_aside_at.is_(None),
                )
                .limit(BATCH)
            )
            found.update({row.id: (row, row.cut_reason or "revoked") for row in retries})
            if time.monotonic() - self._last_reconcile > RECONCILE_SECONDS:
                missed = await session.scalars(
                    select(GrantSession)
                    .join(Grant, Grant.id == GrantSession.grant_id)
                    .where(Grant.revoked_at.is_not(None), *waiting)
                    .limit(BATCH)
                )
                found.update({row.id: (row, "revoked") for row in missed})
                SET_ASIDE.set(
                    await session.scalar(
                        select(func.count())
                        .select_from(GrantSession)
                        .where(GrantSession.set_aside_at.is_not(None))
                    )
                    or 0
                )
                self._last_reconcile = time.monotonic()
        return list(found.values())

    # ------------------------------------------------------------------ one cut

    async def _claim(self, row: GrantSession, reason: str, now: datetime) -> bool:
        """Takes the row's lease; False when another replica holds it or it is gone."""
        lease = now + timedelta(seconds=self.settings.enforcement_timeout_seconds * 3)
        async with self.sessions() as session:
            result = await session.execute(
                update(GrantSession)
                .where(
                    GrantSession.id == row.id,
                    GrantSession.set_aside_at.is_(None),
                    (GrantSession.next_attempt_at.is_(None))
                    | (GrantSession.next_attempt_at <= now),
                )
                .values(
                    next_attempt_at=lease,
                    cut_reason=func.coalesce(GrantSession.cut_reason, reason),
                )
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        return rows_matched(result) == 1

    async def _cut_one(self, row: GrantSession, reason: str, now: datetime) -> int:
        async with self._slots:
            if not await self._claim(row, reason, now):
                return 0
            started = time.monotonic()
            try:
                outcome = await self._cut(row)
            except ControlFailure as failure:
                await self._failed(row, reason, str(failure), lasting=failure.lasting)
                return 1
            except (httpx.HTTPError, OSError) as error:
                await self._failed(row, reason, f"{type(error).__name__}: {error}", lasting=False)
                return 1
            finally:
                CUT_SECONDS.labels(row.kind).observe(time.monotonic() - started)
            async with self.sessions() as session:
                await session.execute(delete(GrantSession).where(GrantSession.id == row.id))
                await session.commit()
            CUTS.labels(row.kind, reason, outcome).inc()
            log.info(
                "session cut",
                extra={
                    "grant_id": row.grant_id,
                    "kind": row.kind,
                    "server": row.server,
                    "reason": reason,
                    "outcome": outcome,
                },
            )
            return 1

    async def _cut(self, row: GrantSession) -> CutOutcome:
        if row.kind == "mqtt":
            if self.broker is None:
                raise ControlFailure(
                    "no MQTT broker configured (FEEDGRID_MQTT_ADMIN_URL)", lasting=True
                )
            return await self.broker.delete_client(row.session_id)
        client = self.servers.client_for(row.kind, row.server)
        return await client.cut(
            SessionToCut(row.kind, row.server, row.session_id, row.app, row.stream, row.protocol)
        )

    def _scrub(self, error: str) -> str:
        """The error without any secret a client library may have put in it (a URL's query)."""
        secrets = [server.secret for server in self.settings.media_servers if server.secret]
        if self.settings.mqtt_admin_password is not None:
            secrets.append(self.settings.mqtt_admin_password)
        for secret in secrets:
            if value := secret.get_secret_value():
                error = error.replace(value, "***")
        return error

    async def _failed(self, row: GrantSession, reason: str, error: str, *, lasting: bool) -> None:
        error = self._scrub(error)
        attempts = row.attempts + 1
        context = {"grant_id": row.grant_id, "kind": row.kind, "server": row.server}
        values: dict[str, object] = {"attempts": attempts, "last_error": error[:500]}
        retry_at: datetime | None = None
        if lasting or attempts >= self.settings.enforcement_attempts:
            values["set_aside_at"] = utcnow()
            CUTS.labels(row.kind, reason, "set_aside").inc()
            log.warning(
                "session cut set aside after %d attempt(s): %s", attempts, error, extra=context
            )
        else:
            delay = min(
                self.settings.enforcement_retry_initial_seconds * 2 ** (attempts - 1),
                self.settings.enforcement_retry_max_seconds,
            )
            retry_at = values["next_attempt_at"] = utcnow() + timedelta(seconds=delay)
            CUTS.labels(row.kind, reason, "retry").inc()
            log.info("session cut failed, retrying in %.1fs: %s", delay, error, extra=context)
        async with self.sessions() as session:
            await session.execute(
                update(GrantSession).where(GrantSession.id == row.id).values(**values)
            )
            await session.commit()
        if retry_at is not None:
            self._schedule_retry(retry_at)

    def _schedule_retry(self, at: datetime) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, (at - utcnow()).total_seconds()), self._wakeup.set)
