"""Kafka -> Faust agents -> ClickHouse (chdb), on the real broker: enrichment, dead letters,
feed versions, and consumption that pauses while ClickHouse refuses inserts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from infra.clickhouse import connect
from infra.clickhouse_migrations import apply_migrations
from infra.foreground import background_share, serving
from schemas.events import CloudEvent
from schemas.settings import Settings
from schemas.topics import DEAD_LETTER
from streams.context import StreamContext
from tests.integration.streams_support import (
    ACCESS_TOPIC,
    FEED_TOPIC,
    Retrieval,
    access_event,
    counted,
    decode_json,
    fast_tuning,
    feed_document,
    feed_event,
    grant_issued,
    produce,
    query,
    read_topic,
    running_worker,
    wait_for_value,
)

pytestmark = pytest.mark.kafka


async def register_feeds(settings: Settings, documents: list[dict[str, object]]) -> None:
    await produce(settings, FEED_TOPIC, [feed_event(document) for document in documents])
    await wait_for_value(
        settings, "SELECT count() FROM feed_metadata FINAL", len(documents), timeout=60
    )


async def test_access_events_arrive_enriched_in_clickhouse(stream_settings: Settings) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    camera = feed_document("feed-cam-1", "lz-psb", serial=1, industry="00", region="62010200")
    sensor = feed_document(
        "feed-aq-1", "lz-hbj", kind="sensor", serial=7, sharing_class="unconditional"
    )
    async with running_worker(stream_settings):
        await register_feeds(stream_settings, [camera, sensor])
        events = [
            grant_issued(
                "feed-cam-1", "g-1", "lz-jtj", now - timedelta(hours=1), now + timedelta(hours=1)
            ),
            *Retrieval("feed-cam-1", "lz-jtj", "alice", "g-1", now, 30.0, 1_000_000).events(),
            access_event(
                "access.requested",
                "feed-aq-1",
                now,
                request_id="r-1",
                requester_department="lz-jtj",
            ),
        ]
        await produce(stream_settings, ACCESS_TOPIC, events)
        stored = await wait_for_value(stream_settings, "SELECT count() FROM access_events", 4)
        # decisions are written right after access_events, in the same batch
        await wait_for_value(stream_settings, "SELECT count() FROM decisions", 1)
    assert stored == 4
    rows = query(
        stream_settings,
        "SELECT type, owner_department, kind, region, industry, sharing_class, "
        "requester_department, "
        "concurrent_viewers FROM access_events ORDER BY time, type",
    )
    by_type = {row[0]: row[1:] for row in rows}
    assert by_type["retrieval.started"] == (
        "lz-psb",
        "camera",
        "620102",
        "00",
        "conditional",
        "lz-jtj",
        1,
    )
    assert by_type["retrieval.ended"][:5] == ("lz-psb", "camera", "620102", "00", "conditional")
    assert by_type["retrieval.ended"][6] == 0  # the viewer left
    assert by_type["access.requested"][:4] == ("lz-hbj", "sensor", "", "")
    assert by_type["access.requested"][4] == "unconditional"
    ids = {str(event.id) for event in events}
    stored_ids = {
        row[0] for row in query(stream_settings, "SELECT toString(event_id) FROM access_events")
    }
    assert stored_ids == ids
    usage = query(
        stream_settings,
        "SELECT sum(retrievals), sum(bytes), sum(seconds), uniqMerge(requesters) "
        "FROM usage_departments_minute WHERE owner_department = 'lz-psb'",
    )
    assert usage == [(1, 1_000_000, 30.0, 1)]
    decisions = query(
        stream_settings, "SELECT request_id, decision, owner_department FROM decisions FINAL"
    )
    assert decisions == [("r-1", "pending", "lz-hbj")]


async def test_malformed_messages_go_to_dead_letter_and_the_worker_goes_on(
    stream_settings: Settings,
) -> None:
    now = datetime.now(UTC)
    wrong_type = access_event("retrieval.started", "feed-x", now, requester_department="lz-jtj")
    wrong_type.type = "feedgrid.something.else"
    bad_payload = access_event("retrieval.started", "feed-x", now, bytes=-5)
    malformed = [
        ("feed-x", b"{not json"),
        ("feed-x", bad_payload.to_bytes()),
        ("feed-x", wrong_type.to_bytes()),
        ("feed-x", b"\xff\xfe binary"),
    ]
    good = Retrieval("feed-x", "lz-jtj", "bob", "g-9", now, 5.0, 500).events()
    async with running_worker(stream_settings):
        await produce(
            stream_settings, ACCESS_TOPIC, [*malformed[:2], good[0], *malformed[2:], good[1]]
        )
        stored = await wait_for_value(stream_settings, "SELECT count() FROM access_events", 2)
        letters = await read_topic(stream_settings, DEAD_LETTER, at_least=4)
    assert stored == 2
    assert len(letters) == 4
    bodies = sorted(
        (decode_json(record.value) for record in letters), key=lambda body: body["offset"]
    )
    for body in bodies:
        assert body["topic"] == f"{stream_settings.topic_prefix}access-events"
        assert body["key"] == "feed-x"
        assert isinstance(body["partition"], int) and isinstance(body["offset"], int)
    reasons = [body["reason"] for body in bodies]
    assert "schema violation" in reasons[0]
    assert "data.bytes" in reasons[1]
    assert "unexpected event type" in reasons[2]
    assert bodies[0]["payload"] == "{not json"
    assert bodies[3]["payload"] is None and bodies[3]["payload_base64"]
    assert all(record.key == b"feed-x" for record in letters)


async def test_feed_metadata_keeps_versions_and_the_latest_wins(stream_settings: Settings) -> None:
    first = feed_document("feed-v", "lz-psb", revision=1)
    second = {
        **feed_document("feed-v", "lz-psb", revision=3),
        "name": "renamed",
        "status": "offline",
    }
    older = {**feed_document("feed-v", "lz-psb", revision=2), "name": "stale"}
    async with running_worker(stream_settings) as context:
        await produce(
            stream_settings,
            FEED_TOPIC,
            [
                feed_event(first),
                feed_event(second, "feedgrid.feed.updated"),
                feed_event(older, "feedgrid.feed.updated"),
            ],
        )
        # The three versions may arrive in one insert, which ReplacingMergeTree collapses.
        await wait_for_value(stream_settings, "SELECT max(version) FROM feed_metadata", 3)
        await asyncio.sleep(0.5)
        facts = context.catalog.get("feed-v")
    latest = query(stream_settings, "SELECT version, name, status FROM feed_metadata FINAL")
    assert latest == [(3, "renamed", "offline")]
    # The catalog that enriches events holds the newest version, not the last one read.
    assert facts is not None and facts.version == 3 and facts.owner_department == "lz-psb"


async def test_feed_metadata_is_cut_by_bytes_and_a_bad_message_set_aside(
    stream_settings: Settings,
) -> None:
    """Feed documents go the batch path: a batch is cut at ``batch_max_bytes`` (64 KiB here,
    about 30 documents) long before ``batch_size``, even within one fetch; a bad message goes to
    the dead-letter topic and the rest is stored."""
    documents = [
        {**feed_document(f"feed-b{serial:03d}", "lz-psb", serial=serial), "note": "x" * 1_500}
        for serial in range(300)
    ]
    events: list[CloudEvent | tuple[str, bytes]] = [feed_event(document) for document in documents]
    events.insert(150, ("feed-b150", b'{"specversion": "1.0"}'))
    tuning = fast_tuning(batch_max_bytes=64 * 1024, flush_seconds=5.0)
    async with running_worker(stream_settings, tuning) as context:
        await produce(stream_settings, FEED_TOPIC, events)
        stored = await wait_for_value(
            stream_settings, "SELECT count() FROM feed_metadata", len(documents), timeout=60
        )
        letters = await read_topic(stream_settings, DEAD_LETTER, at_least=1)
        # A batch's rows are in ClickHouse before its offsets are committed and it is counted:
        # the last one may still be on its way (CI once read 9 here with all 10 stored).
        batches = await counted(lambda: context.pipeline.batches_stored, at_least=10)
    assert stored == len(documents)
    # 300 documents of ~2.2 KB (660 KB), at most 64 KiB and one record a batch: at least 10
    # batches, however the fetches fell, where batch_size (2,000) and the flush (5 s) alone
    # would make one
    assert batches >= 10, batches
    (letter,) = letters
    body = decode_json(letter.value)
    assert body["topic"] == f"{stream_settings.topic_prefix}{FEED_TOPIC}"
    assert "schema violation" in body["reason"] and letter.key == b"feed-b150"
    kept = query(stream_settings, "SELECT document FROM feed_metadata WHERE feed_id = 'feed-b007'")
    assert decode_json(kept[0][0].encode())["note"] == "x" * 1_500  # the whole document


async def test_a_restarted_worker_counts_no_lag_for_what_it_had_consumed(
    stream_settings: Settings,
) -> None:
    """The lag of a partition counts from where the worker starts on it: after a restart, a
    partition with nothing new is no lag (it once counted as its whole topic), and records
    sent since count exactly."""
    now = datetime.now(UTC)
    first = Retrieval("feed-r", "lz-jtj", "ann", "g-r", now, 2.0, 10).events()
    async with running_worker(stream_settings) as context:
        await produce(stream_settings, ACCESS_TOPIC, first * 20)
        await wait_for_value(stream_settings, "SELECT count() FROM access_events", len(first))
        for _ in range(100):
            if context.pipeline.measure()["access-events"][0] == 0:
                break
            await asyncio.sleep(0.1)
        assert context.pipeline.measure()["access-events"][0] == 0
    async with running_worker(stream_settings, fast_tuning(stall_seconds=2.0)) as context:
        await asyncio.sleep(3)  # assigned and started: the lag counts from the start
        assert context.pipeline.measure()["access-events"] == (0, 0.0)
        assert context.pipeline.health()[0]
    # records sent while no worker runs are lag, each one
    later = Retrieval("feed-r", "lz-jtj", "bo", "g-r", now, 2.0, 10).events()
    await produce(stream_settings, ACCESS_TOPIC, later)
    client = connect(stream_settings.clickhouse_url)
    client.command("DETACH TABLE access_events")  # held back: the lag stays to be seen
    try:
        async with running_worker(stream_settings) as context:
            await asyncio.sleep(3)
            assert context.pipeline.measure()["access-events"][0] == len(later)
            client.command("ATTACH TABLE access_events")
            await wait_for_value(
                stream_settings, "SELECT count() FROM access_events", len(first) + len(later)
            )
    finally:
        client.command("ATTACH TABLE IF NOT EXISTS access_events")


async def test_consumption_pauses_while_clickhouse_refuses_and_resumes_without_loss(
    stream_settings: Settings,
) -> None:
    now = datetime.now(UTC)
    await asyncio.to_thread(apply_migrations, stream_settings.clickhouse_url)
    client = connect(stream_settings.clickhouse_url)
    client.command("DETACH TABLE access_events")
    retrievals = [
        Retrieval("feed-p", "lz-jtj", f"user{i}", "g-p", now + timedelta(seconds=i), 2.0, 100 * i)
        for i in range(100)
    ]
    events = [event for retrieval in retrievals for event in retrieval.events()]
    async with running_worker(stream_settings, fast_tuning(stall_seconds=2.0)) as context:
        await produce(stream_settings, ACCESS_TOPIC, events)
        await asyncio.sleep(3)
        assert context.sink.available is False
        # The watchdog says so: records wait, nothing was committed for seconds, not ready.
        lag, stalled = context.pipeline.measure()["access-events"]
        assert lag == len(events) and stalled >= 2
        ready, detail = context.pipeline.health()
        assert not ready  # stall_seconds is 2 here (30 by default)
        assert detail["lag"]["access-events"] == len(events)
        client.command("ATTACH TABLE access_events")
        stored = await wait_for_value(
            stream_settings, "SELECT count() FROM access_events", len(events)
        )
        assert context.sink.available is True
        await asyncio.sleep(1.5)
        assert context.pipeline.measure()["access-events"] == (0, 0.0)
    assert stored == len(events)
    assert query(stream_settings, "SELECT uniqExact(event_id) FROM access_events") == [
        (len(events),)
    ]
    assert query(
        stream_settings,
        "SELECT sum(retrievals), sum(bytes) FROM usage_feeds_minute WHERE feed_id = 'feed-p'",
    ) == [(100, sum(100 * i for i in range(100)))]


def _paused(loop: str) -> float:
    sample = REGISTRY.get_sample_value("feedgrid_background_paused_seconds_total", {"loop": loop})
    return sample or 0.0


async def test_an_embedded_worker_gives_way_to_requests_in_flight_and_stores_everything(
    stream_settings: Settings,
) -> None:
    documents = [
        feed_document(f"feed-w{serial:03d}", "lz-psb", serial=serial) for serial in range(40)
    ]
    before = {loop: _paused(loop) for loop in ("stream-batches", "feed-catalog")}
    async with running_worker(stream_settings) as context:
        # the API of the same process is answering a request all along (infra/foreground)
        with background_share(0.5), serving():
            await register_feeds(stream_settings, documents)
            await wait_until_known(context, [document["id"] for document in documents])
    assert _paused("stream-batches") > before["stream-batches"]
    assert _paused("feed-catalog") > before["feed-catalog"]
    stored = query(stream_settings, "SELECT count() FROM feed_metadata FINAL")
    assert stored == [(len(documents),)]


async def wait_until_known(context: StreamContext, feed_ids: list[str]) -> None:
    for _ in range(240):
        if all(context.catalog.get(feed_id) is not None for feed_id in feed_ids):
            return
        await asyncio.sleep(0.25)
    raise AssertionError("the worker's catalog did not learn every feed")
