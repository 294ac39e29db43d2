"""Everything one API process holds for its lifetime, built once at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from infra.kafka_admin import ensure_topics
from infra.kafka_producer import SharedProducer
from registry_api.access.components import AccessServices
from registry_api.audit.service import listen_to_access_events
from registry_api.db import create_engine, session_factory
from registry_api.enforcement.worker import Enforcer
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.idp import IdentityProviderTokens
from registry_api.identity.resolver import ApiKeyResolver
from registry_api.outbox.relay import OutboxRelay
from registry_api.subscriptions.deadlines import DeadlineKeeper
from registry_api.subscriptions.dispatcher import WebhookDispatcher
from registry_api.subscriptions.notify import on_access_events
from registry_api.wal_checkpoints import WalCheckpointer
from schemas.settings import Settings

log = logging.getLogger("feedgrid.runtime")


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    api_keys: ApiKeyResolver
    relay: OutboxRelay
    access: AccessServices
    # Built for every process, loaded only where registered as a component (the API).
    feed_index: FeedIndex
    # Events published straight to Kafka, not through the outbox (liveness reports).
    producer: SharedProducer
    # Cuts the sessions of revoked and ended grants on the media servers and the MQTT broker.
    enforcement: Enforcer
    # Webhook delivery and the deadline keeper (None where FEEDGRID_NOTIFY_ENABLED is false).
    webhooks: WebhookDispatcher | None = None
    deadlines: DeadlineKeeper | None = None
    components: list[Component] = field(default_factory=list)
    topics_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = create_engine(settings.database_url)
        sessions = session_factory(engine)
        access = AccessServices(settings, sessions)
        runtime = cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            api_keys=ApiKeyResolver(
                sessions,
                refresh_seconds=settings.api_key_refresh_seconds,
                identity_provider=IdentityProviderTokens.from_settings(settings),
            ),
            relay=OutboxRelay(settings, engine, sessions),
            access=access,
            feed_index=FeedIndex(
                sessions,
                spill_above_feeds=settings.rendered_spill_above_feeds,
                hot_bytes=int(settings.rendered_hot_mib * 2**20),
                spill_dir=settings.var_dir,
            ),
            producer=SharedProducer(settings.kafka_bootstrap, client_id="feedgrid-api"),
            enforcement=Enforcer(settings, sessions, access.grants),
        )
        runtime.access.hook_events.on_written = runtime.relay.notify
        runtime.components.append(runtime.api_keys)
        runtime.components.append(runtime.access)
        runtime.components.append(runtime.enforcement)
        runtime.components.append(WalCheckpointer(engine))
        # Access events that someone should hear of become webhook deliveries in the same
        # transaction, whichever replica sends them.
        listen_to_access_events(on_access_events)
        if settings.notify.enabled:
            postgres = not settings.is_sqlite
            runtime.webhooks = WebhookDispatcher(settings.notify, sessions, postgres=postgres)
            runtime.deadlines = DeadlineKeeper(
                settings.notify,
                sessions,
                postgres=postgres,
                on_written=runtime.wake_senders,
            )
            runtime.components += [runtime.webhooks, runtime.deadlines]
        return runtime

    def wake_senders(self) -> None:
        """After a commit that wrote outbox rows and webhook deliveries."""
        self.relay.notify()
        if self.webhooks is not None:
            self.webhooks.notify()

    async def start(self) -> None:
        self._background.append(asyncio.create_task(self._create_topics_when_possible()))
        if self.settings.relay_enabled:
            await self.relay.start()
        for component in self.components:
            await component.start()

    async def stop(self) -> None:
        for component in reversed(self.components):
            with contextlib.suppress(Exception):
                await component.stop()
        await self.relay.stop()
        await self.producer.stop()
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.engine.dispose()

    async def _create_topics_when_possible(self) -> None:
        """Kafka may be down at start: keep trying in the background, never block the API."""
        delay = 0.5
        while True:
            try:
                await ensure_topics(self.settings)
                self.topics_ready.set()
                break
            except Exception as error:
                log.warning("kafka topics not created yet: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
        # Connected before the first liveness report asks for it (a failure is retried then).
        with contextlib.suppress(Exception):
            await self.producer.get()
