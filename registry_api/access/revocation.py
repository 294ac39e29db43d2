"""What the hooks know about grants, in memory, so a decision needs no database round trip.

Each grant a hook meets is read from the database once (its row: owner, end, revocation) and
kept. Every replica polls the ``grants`` table for revocations every
``revocation_refresh_seconds`` (an indexed range scan that returns only recent revocations), and
the replica that revokes marks the grant at once: a revocation is in force everywhere within
one poll interval, well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.polling import refresh_every
from registry_api.access.models import Grant
from schemas.events import utcnow

log = logging.getLogger("feedgrid.access.revocation")

# A revocation committed this long after its revoked_at timestamp is still picked up.
COMMIT_LAG_ALLOWANCE = timedelta(seconds=30)
KNOWN_GRANTS_LIMIT = 200_000


@dataclass(frozen=True)
class GrantState:
    grant_id: str
    owner_department: str
    requester_department: str
    valid_until: float  # epoch seconds
    revoked: bool


class GrantStates:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], refresh_seconds: float) -> None:
        self.sessions = sessions
        self.refresh_seconds = refresh_seconds
        self._known: OrderedDict[str, GrantState] = OrderedDict()
        self._revoked: dict[str, float] = {}  # grant id -> its end (epoch seconds)
        self._watermark: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_refresh = 0.0
        self._last_prune = 0.0
        # Told the id of each grant this process learns is revoked (the enforcer cuts its
        # sessions): at once on this replica, within one poll for the others'.
        self.revocation_listeners: list[Callable[[str], None]] = []

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as error:  # the database may be down at start: the poll retries
            log.warning("cannot read revocations at start: %s", error)
        self._task = asyncio.create_task(
            refresh_every(self.refresh_seconds, self.refresh, what="revocations", log=log),
            name="revocation-refresh",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def is_revoked(self, grant_id: str) -> bool:
        return grant_id in self._revoked

    def mark_revoked(self, grant_id: str, valid_until: datetime) -> None:
        """Called by the replica that revokes, right after its commit."""
        self._revoked[grant_id] = valid_until.timestamp()
        self._known.pop(grant_id, None)
        self._tell(grant_id)

    def _tell(self, grant_id: str) -> None:
        for listener in self.revocation_listeners:
            listener(grant_id)

    async def state(self, grant_id: str) -> GrantState | None:
        """The grant as last read, revocation applied; None for an unknown grant."""
        known = self._known.get(grant_id)
        if known is None:
            known = await self._load(grant_id)
            if known is None:
                return None
        if grant_id in self._revoked and not known.revoked:
            known = GrantState(
                known.grant_id,
                known.owner_department,
                known.requester_department,
                known.valid_until,
                True,
            )
        return known

    async def _load(self, grant_id: str) -> GrantState | None:
        async with self.sessions() as session:
            grant = await session.get(Grant, grant_id)
        if grant is None:
            return None
        state = GrantState(
            grant_id=grant.id,
            owner_department=grant.owner_department,
            requester_department=grant.requester_department,
            valid_until=grant.valid_until.timestamp(),
            revoked=grant.revoked_at is not None,
        )
        if state.revoked:
            self._revoked[grant_id] = state.valid_until
        self._known[grant_id] = state
        if len(self._known) > KNOWN_GRANTS_LIMIT:
            self._known.popitem(last=False)
        return state

    async def refresh(self) -> None:
        """Reads revocations since the last watermark (all live ones on the first call)."""
        async with self.sessions() as session:
            query = select(Grant.id, Grant.revoked_at, Grant.valid_until).where(
                Grant.revoked_at.is_not(None)
            )
            if self._watermark is None:
                query = query.where(Grant.valid_until > utcnow())
            else:
                query = query.where(Grant.revoked_at > self._watermark - COMMIT_LAG_ALLOWANCE)
            rows = (await session.execute(query)).all()
        newest = self._watermark
        for grant_id, revoked_at, valid_until in rows:
            if grant_id not in self._revoked:
                self._tell(grant_id)
            self._revoked[grant_id] = valid_until.timestamp()
            if newest is None or revoked_at > newest:
                newest = revoked_at
        self._watermark = newest or self._watermark or utcnow()
        self._forget_ended()
        self.last_refresh = time.monotonic()

    def _forget_ended(self) -> None:
        """A grant past its end refuses every token anyway: its revocation need not be kept."""
        now = time.time()
        if len(self._revoked) > 1000 or now - self._last_prune > 60:
            self._revoked = {grant: end for grant, end in self._revoked.items() if end > now}
            self._last_prune = now
