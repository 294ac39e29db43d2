"""The long-lived parts of access control one API process holds: keys, grant states, hook events."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.access.feed_columns import SharingRules
from registry_api.access.requests import KnownDepartments
from registry_api.access.revocation import GrantStates
from registry_api.audit.writer import BufferedAccessEvents
from registry_api.tokens.keyring import KeyRing
from registry_api.tokens.service import RetrievalTokens
from schemas.settings import Settings


class AccessServices:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        ttl = timedelta(seconds=settings.retrieval_token_ttl_seconds)
        self.settings = settings
        self.keyring = KeyRing(
            settings.signing_key_dir,
            rotation_period=timedelta(days=settings.signing_key_rotation_days),
            longest_token=ttl,
        )
        self.tokens = RetrievalTokens(self.keyring, issuer=settings.token_issuer, ttl=ttl)
        self.grants = GrantStates(sessions, settings.revocation_refresh_seconds)
        self.hook_events = BufferedAccessEvents(
            sessions,
            flush_seconds=settings.hook_event_flush_seconds,
            batch_size=settings.hook_event_batch_size,
        )
        # The written conditions and legal basis of feeds, by revision, for access requests.
        self.sharing_rules = SharingRules()
        # Departments' kind and answer deadline (fixed once registered), for access requests.
        self.departments = KnownDepartments()
        # Sessions the media servers opened, for the duration reported when they end.
        self.play_sessions: dict[str, float] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self.keyring.load)
        await self.grants.start()
        await self.hook_events.start()

    async def stop(self) -> None:
        await self.hook_events.stop()
        await self.grants.stop()
