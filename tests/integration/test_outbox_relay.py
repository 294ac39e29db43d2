"""The outbox relay publishes every committed event once and marks the rows it published
sent in few writes: one per quarter second of publishing, and before it idles or stops. A row
it cannot read is set aside on the dead-letter topic, not retried."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sqlite3
from pathlib import Path

import orjson
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.kafka_admin import ensure_topics
from registry_api.db import create_engine, session_factory
from registry_api.migrate import upgrade_registry
from registry_api.outbox.models import OutboxMessage
from registry_api.outbox.relay import MARK_EVERY_SECONDS, OutboxRelay
from registry_api.outbox.service import enqueue_many
from schemas.events import CloudEvent, utcnow
from schemas.settings import Settings
from schemas.topics import DEAD_LETTER, FEED_METADATA, topic_name
from tests.conftest import running_client
from tests.integration.feeds_support import POLICE, build_city, camera, outbox_messages
from tests.integration.feeds_support import read_topic as read_events
from tests.integration.streams_support import read_topic

COMMITS = 60


async def _commit_events(
    relay: OutboxRelay, sessions: async_sessionmaker[AsyncSession], pause: float
) -> list[str]:
    """COMMITS transactions of one event each, the relay told after each (as the API does)."""
    written = []
    for number in range(COMMITS):
        event = CloudEvent(
            type="feedgrid.feed.updated", subject=f"feed-{number % 7}", data={"n": number}
        )
        async with sessions() as session:
            await enqueue_many(session, [(FEED_METADATA, f"feed-{number % 7}", event.to_bytes())])
            await session.commit()
        relay.notify()
        written.append(str(event.id))
        await asyncio.sleep(pause)
    return written


async def _received(settings: Settings, expected: int) -> list[str]:
    """The ids of the events on the topic, a second after the expected count (duplicates)."""
    received = await read_events(
        settings.kafka_bootstrap, settings.topic_prefix, FEED_METADATA, until=expected, linger=1.0
    )
    return [str(event.id) for _, event in received]


async def _unsent(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        statement = select(func.count()).where(OutboxMessage.sent_at.is_(None))
        return int(await session.scalar(statement) or 0)


async def test_published_rows_are_marked_sent_together_and_before_the_relay_idles(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    relay = OutboxRelay(settings, engine, sessions)
    batches = 0
    publish = relay._publish  # noqa: SLF001 (counted, not replaced: Kafka gets every batch)

    async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal batches
        batches += 1
        return await publish(*args, **kwargs)

    relay._publish = counted  # type: ignore[method-assign]  # noqa: SLF001
    marks = 0
    mark = relay._mark_published  # noqa: SLF001

    async def counted_mark() -> None:
        nonlocal marks
        if relay._published:  # noqa: SLF001
            marks += 1
        await mark()

    relay._mark_published = counted_mark  # type: ignore[method-assign]  # noqa: SLF001
    await relay.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        written = await _commit_events(relay, sessions, pause=0.01)
        async with asyncio.timeout(10):  # nothing left to publish: the rest is marked
            while await _unsent(sessions):
                await asyncio.sleep(0.05)
        elapsed = loop.time() - started  # the relay's marks all fall within this
        seen = await _received(settings, len(written))
    finally:
        await relay.stop()
        await engine.dispose()
    assert sorted(seen) == sorted(written), "each event published exactly once"
    assert batches >= COMMITS // 4, "the relay published as the commits came"
    # one write per MARK_EVERY_SECONDS of publishing, plus those before idling
    assert marks <= elapsed / MARK_EVERY_SECONDS + 3 < batches, (marks, batches, elapsed)


async def test_the_backlog_counts_the_messages_not_yet_published(settings: Settings) -> None:
    """What /metrics reports as feedgrid_outbox_backlog_messages: the messages of the unsent
    rows, less those this relay published and has not marked sent yet."""
    await ensure_topics(settings)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    relay = OutboxRelay(settings, engine, sessions)
    messages = [
        (FEED_METADATA, f"feed-{number}", CloudEvent(type="t", data={"n": number}).to_bytes())
        for number in range(5)
    ]
    try:
        async with sessions() as session:
            await enqueue_many(session, messages[:2])
            await session.commit()
        async with sessions() as session:
            await enqueue_many(session, messages[2:])
            await session.commit()
        assert await relay.backlog() == 5
        assert await relay.publish_pending() == 5
        assert await _unsent(sessions), "published, not marked sent yet"
        assert await relay.backlog() == 0
        async with sessions() as session:
            await enqueue_many(session, messages[:3])
            await session.commit()
        assert await relay.backlog() == 3
        await relay._mark_published()  # noqa: SLF001
        assert await relay.backlog() == 3
    finally:
        await relay.stop()
        await engine.dispose()


async def test_metrics_report_the_outbox_backlog(settings: Settings) -> None:
    """With no relay running, a registered feed's event waits in the outbox: /metrics says
    how many messages wait."""
    async with running_client(settings.model_copy(update={"relay_enabled": False})) as http:
        city = await build_city(http)
        before = (await http.get("/metrics")).text.splitlines()
        registered = await http.post(
            "/v1/feeds",
            json=camera(POLICE, 1),
            headers={"Authorization": f"Bearer {city.keys[(POLICE, 'dept_admin')]}"},
        )
        assert registered.status_code == 201, registered.text
        runtime = http.app.state.runtime  # type: ignore[attr-defined]
        waiting = await outbox_messages(runtime, unsent_only=True)
        after = (await http.get("/metrics")).text.splitlines()
    assert waiting > 0
    assert f"feedgrid_outbox_backlog_messages {float(waiting)}" in after
    assert f"feedgrid_outbox_backlog_messages {float(waiting - 1)}" in before


async def test_a_stopping_relay_marks_what_it_published(settings: Settings) -> None:
    """A standby replica (or a restart) takes over from a stopped relay without publishing
    any event again: stop() marks the rows published and not marked yet."""
    await ensure_topics(settings)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    relay = OutboxRelay(settings, engine, sessions)
    await relay.start()
    try:
        commits = asyncio.create_task(_commit_events(relay, sessions, pause=0.005))
        async with asyncio.timeout(30):
            while not relay._published:  # noqa: SLF001 (published, not marked yet)
                await asyncio.sleep(0.002)
        await relay.stop()
        relay = OutboxRelay(settings, engine, sessions)
        await relay.start()
        written = await commits
        relay.notify()
        seen = await _received(settings, len(written))
    finally:
        await relay.stop()
        await engine.dispose()
    assert sorted(seen) == sorted(written), "each event published exactly once"


async def test_a_row_that_cannot_be_read_is_set_aside_and_the_rows_after_it_are_published(
    settings: Settings,
) -> None:
    """A damaged bundle can never be published: retried, it would hold back every row after it
    for good. It goes to the dead-letter topic with its reason, and the relay goes on."""
    await ensure_topics(settings)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    before = CloudEvent(type="feedgrid.feed.updated", subject="feed-1", data={"n": 1})
    after = CloudEvent(type="feedgrid.feed.updated", subject="feed-2", data={"n": 2})
    damaged = b"\x28\xb5\x2f\xfd not a zstd frame after all"
    async with sessions() as session:
        await enqueue_many(session, [(FEED_METADATA, "feed-1", before.to_bytes())])
        row = OutboxMessage(
            topic=FEED_METADATA, key="feed-9", payload=damaged, messages=3, codec="zstd",
            created_at=utcnow(),
        )  # fmt: skip
        session.add(row)
        await session.flush()
        damaged_id = row.id
        await enqueue_many(session, [(FEED_METADATA, "feed-2", after.to_bytes())])
        await session.commit()
    counted = REGISTRY.get_sample_value("feedgrid_outbox_set_aside_total") or 0.0
    relay = OutboxRelay(settings, engine, sessions)
    await relay.start()
    try:
        published = await _received(settings, 2)
        letters = [
            (record.key, orjson.loads(record.value))
            for record in await read_topic(settings, DEAD_LETTER, at_least=1)
        ]
        async with asyncio.timeout(10):
            while await _unsent(sessions):
                await asyncio.sleep(0.05)
    finally:
        await relay.stop()
        await engine.dispose()
    # (in any order: the two keys may hash to different partitions)
    assert sorted(published) == sorted([str(before.id), str(after.id)])
    [(key, letter)] = letters
    assert key == b"feed-9"
    assert letter["topic"] == topic_name(settings.topic_prefix, FEED_METADATA)
    assert letter["outbox_id"] == damaged_id
    assert "does not decompress" in letter["reason"]
    assert base64.b64decode(letter["payload_base64"]) == damaged
    assert REGISTRY.get_sample_value("feedgrid_outbox_set_aside_total") == counted + 1


def test_an_upgraded_registry_keeps_its_unsent_rows_with_the_payload_stored_last(
    tmp_path: Path,
) -> None:
    """Migration 0009 rebuilds a SQLite outbox with the payload after every other column,
    where a bundle's overflow pages no longer lie between a row and its ``messages``,
    ``codec`` and ``sent_at``; the rows written before (sent or not) come through as they
    were."""
    path = tmp_path / "registry.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_registry(url, "0008_outbox_codec")
    bundle = os.urandom(150_000)  # dozens of overflow pages
    rows = [
        (1, "feed-metadata", "feed-1", b'{"one": 1}', "2026-12-06 10:00:00.000000", None, 1, None),
        (2, "access-events", "req-1", bundle, "2026-12-06 10:00:01.000000", None, 300, "zstd"),
        (3, "access-events", "req-0", b"x", "2026-12-06 09:00:00.000000",
         "2026-12-06 09:00:02.000000", 2, None),
    ]  # fmt: skip
    columns = '(id, topic, "key", payload, created_at, sent_at, messages, codec)'
    with contextlib.closing(sqlite3.connect(path)) as connection:
        before = [name for _, name, *_ in connection.execute("PRAGMA table_info(outbox)")]
        connection.executemany(
            f"INSERT INTO outbox {columns} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        connection.commit()
    assert before[-1] != "payload"  # as 0007 and 0008 left it

    upgrade_registry(url)

    with contextlib.closing(sqlite3.connect(path)) as connection:
        after = [name for _, name, *_ in connection.execute("PRAGMA table_info(outbox)")]
        kept = connection.execute(
            'SELECT id, topic, "key", payload, created_at, sent_at, messages, codec FROM outbox '
            "ORDER BY id"
        ).fetchall()
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(outbox)")}
    assert after[-1] == "payload"
    assert sorted(after) == sorted(before)
    assert kept == rows
    assert "ix_outbox_sent_at" in indexes
