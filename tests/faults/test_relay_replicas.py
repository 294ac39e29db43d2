"""Two API replicas on one PostgreSQL: their outbox relays never publish an event twice or
out of order, and the standby takes over when the active relay stops."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from infra.kafka_admin import ensure_topics
from registry_api.db import create_engine, session_factory
from registry_api.outbox.relay import OutboxRelay
from registry_api.outbox.service import enqueue_many
from schemas.events import CloudEvent
from schemas.settings import Settings
from schemas.topics import FEED_METADATA
from tests.integration.feeds_support import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

FEEDS = 20
VERSIONS = 25


async def _write_versions(  # type: ignore[no-untyped-def]
    relays: list[OutboxRelay], sessions, pause: float, first_version: int = 1
) -> list[str]:
    """Commits VERSIONS versions of FEEDS feeds, one transaction per version batch."""
    written: list[str] = []
    for version in range(first_version, first_version + VERSIONS):
        async with sessions() as session:
            for feed in range(FEEDS):
                event = CloudEvent(
                    type="feedgrid.feed.updated",
                    subject=f"feed-{feed}",
                    data={"feed_id": f"feed-{feed}", "version": version},
                )
                await enqueue_many(session, [(FEED_METADATA, f"feed-{feed}", event.to_bytes())])
                written.append(str(event.id))
            await session.commit()
        for relay in relays:
            relay.notify()
        await asyncio.sleep(pause)
    return written


async def _consume(settings: Settings, expected: int) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    """(id, data) of every event on the topic, and of anything published twice shortly after."""
    received = await read_topic(
        settings.kafka_bootstrap, settings.topic_prefix, FEED_METADATA, until=expected, linger=1.5
    )
    return [(str(event.id), event.data) for _, event in received]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_relays_publish_each_event_once_in_order_per_feed(settings: Settings) -> None:
    await ensure_topics(settings)
    engine_a, engine_b = create_engine(settings.database_url), create_engine(settings.database_url)
    relay_a = OutboxRelay(settings, engine_a, session_factory(engine_a))
    relay_b = OutboxRelay(settings, engine_b, session_factory(engine_b))
    await relay_a.start()
    await relay_b.start()
    try:
        written = await _write_versions([relay_a, relay_b], session_factory(engine_a), pause=0.01)
        # Half-way through a second round, the active relay goes away: the standby takes over.
        await asyncio.sleep(0.5)
        active, standby = (relay_a, relay_b) if relay_a.is_leader else (relay_b, relay_a)
        await active.stop()
        written += await _write_versions(
            [standby], session_factory(engine_a), pause=0.0, first_version=VERSIONS + 1
        )
        seen = await _consume(settings, len(written))
        standby_took_over = standby.is_leader
    finally:
        for relay in (relay_a, relay_b):
            await relay.stop()
        await engine_a.dispose()
        await engine_b.dispose()

    ids = [event_id for event_id, _ in seen]
    assert len(ids) == len(set(ids)), "an event was published twice"
    assert set(ids) == set(written), "an event was lost"
    versions: dict[str, list[int]] = defaultdict(list)
    for _, data in seen:
        versions[data["feed_id"]].append(data["version"])
    for feed_id, order in versions.items():
        assert order == sorted(order), f"{feed_id} out of order: {order}"
    assert standby_took_over
