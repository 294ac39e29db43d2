"""Bearer tokens to principals: API keys (cached briefly), or identity-provider JWTs.

Hooks resolve the same few gateway keys thousands of times a second, so a resolved key is
kept in memory. A key's revocation or rotation must still be in force everywhere within a
second, on every API replica: each process polls ``api_keys.updated_at`` (indexed; every
change of a key bumps it) every ``api_key_refresh_seconds`` and drops the principals of the
keys that changed. The cache is trusted only while that poll is fresh: when the last poll
began more than ``MAX_STALENESS_SECONDS`` ago (a busy event loop, a slow database), callers
wait for one poll begun then (shared by all of them), and read the key themselves if it
fails, so staleness stays bounded whatever the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.polling import refresh_every
from registry_api.identity.idp import IdentityProviderTokens, looks_like_jwt
from registry_api.identity.keys import API_KEY_PREFIX, hash_secret
from registry_api.identity.models import ApiKey
from registry_api.identity.principal import Principal
from schemas.events import utcnow
from schemas.identity import Role

log = logging.getLogger("feedgrid.identity.keys")

CACHE_LIMIT = 10_000
# A change committed this long after its updated_at timestamp is still seen by the poll.
COMMIT_LAG_ALLOWANCE = timedelta(seconds=30)
MAX_STALENESS_SECONDS = 0.75

KEY_CHANGES_SEEN = Counter(
    "feedgrid_api_key_changes_seen_total",
    "API key changes (rotation, revocation) that dropped cached principals in this process",
)


@dataclass(frozen=True)
class _Cached:
    principal: Principal
    key_id: str
    until: float  # monotonic: trusted until then
    expires_at: float | None  # epoch seconds: the end of a rotated key's grace period


class ApiKeyResolver:
    """Turns a bearer token into a principal. Caches hits briefly so hooks stay fast."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        *,
        ttl_seconds: float = 5.0,
        refresh_seconds: float = 0.25,
        identity_provider: IdentityProviderTokens | None = None,
    ) -> None:
        self.sessions = sessions
        self.ttl_seconds = ttl_seconds
        self.refresh_seconds = refresh_seconds
        self.identity_provider = identity_provider
        self._cache: dict[str, _Cached] = {}
        self._versions: dict[str, datetime | None] = {}  # key id -> updated_at as last read
        self._watermark: datetime | None = None
        self._refresh_began = float("-inf")  # monotonic start of the last successful poll
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lookups

    def cached(self, token: str) -> Principal | None:
        """The principal of a token resolved lately, without any I/O; None when not cached or
        when the cache cannot vouch that the key is still good."""
        entry = self._cache.get(token)
        if entry is None:
            return None
        now = time.monotonic()
        if entry.until <= now or now - self._refresh_began > MAX_STALENESS_SECONDS:
            return None
        if entry.expires_at is not None and entry.expires_at <= time.time():
            self._cache.pop(token, None)
            return None
        return entry.principal

    async def resolve(self, session: AsyncSession, token: str) -> Principal | None:
        principal = self.cached(token)
        if principal is not None:
            return principal
        if token in self._cache and self.sessions is not None:
            # Known but not vouched for (the poll is late: a busy loop or database): one poll
            # for every caller waiting, rather than one key read each.
            with contextlib.suppress(Exception):
                await self._refresh_together()
            principal = self.cached(token)
            if principal is not None:
                return principal
        if self.identity_provider is not None and looks_like_jwt(token):
            return await self.identity_provider.resolve(token)
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
            return None
        record = await session.get(ApiKey, parts[1], populate_existing=True)
        if record is None or record.revoked_at is not None:
            return None
        if record.expires_at is not None and record.expires_at <= utcnow():
            return None
        if not hmac.compare_digest(record.secret_hash, hash_secret(parts[2])):
            return None
        principal = Principal(
            subject=f"key:{record.id}:{record.name}",
            department=record.department_code,
            roles=frozenset(Role(role) for role in record.roles),
        )
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = _Cached(
            principal,
            record.id,
            time.monotonic() + self.ttl_seconds,
            record.expires_at.timestamp() if record.expires_at is not None else None,
        )
        self._versions[record.id] = record.updated_at
        return principal

    def forget(self, key_id: str | None = None) -> None:
        """Drops the cached principals of one key (after this process changed it), or all."""
        if key_id is None:
            self._cache.clear()
            return
        for token in [token for token, entry in self._cache.items() if entry.key_id == key_id]:
            self._cache.pop(token, None)

    # ------------------------------------------------------------------ the poll

    async def start(self) -> None:
        if self.sessions is None:
            return
        with contextlib.suppress(Exception):  # the database may be down: the poll retries
            await self.refresh()
        self._task = asyncio.create_task(
            refresh_every(self.refresh_seconds, self.refresh, what="API key changes", log=log),
            name="api-key-refresh",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Reads the keys changed since the last poll and drops what was cached of them."""
        assert self.sessions is not None
        began = time.monotonic()
        async with self.sessions() as session:
            query = select(ApiKey.id, ApiKey.updated_at)
            if self._watermark is None:
                query = query.where(ApiKey.updated_at.is_not(None)).order_by(
                    ApiKey.updated_at.desc()
                )
                rows = (await session.execute(query.limit(1))).all()
            else:
                query = query.where(ApiKey.updated_at > self._watermark - COMMIT_LAG_ALLOWANCE)
                rows = (await session.execute(query)).all()
        newest = self._watermark
        for key_id, updated_at in rows:
            if self._watermark is not None and key_id in self._versions:
                if self._versions[key_id] != updated_at:
                    self.forget(key_id)
                    self._versions[key_id] = updated_at
                    KEY_CHANGES_SEEN.inc()
            if updated_at is not None and (newest is None or updated_at > newest):
                newest = updated_at
        self._watermark = newest or self._watermark or utcnow()
        if len(self._versions) > CACHE_LIMIT:
            self._versions = {
                entry.key_id: self._versions.get(entry.key_id) for entry in self._cache.values()
            }
        self._refresh_began = max(self._refresh_began, began)

    async def _refresh_together(self) -> None:
        """A poll begun now, shared by every caller that asks while it runs."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self.refresh())
        await asyncio.shield(self._inflight)
