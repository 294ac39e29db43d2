"""A burst from one requester must never stop the access stream (issue 10's freeze).

The freeze as it was seen: the access-events agent folded a requester's retrievals of one
batch into ONE requester-activity message; a burst from one requester made it 3.4 MB, over the
producer's 1 MB limit, and the publisher retried ``MessageSizeTooLargeError`` forever. The
batch was never committed, every department's analytics stood still, and a restart read the
same batch and wedged again. Here: the same burst, then more traffic, then a restart and a
second burst, all stored once; and a message no retry can publish is set aside, not retried.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.kafka_admin import ensure_topics
from schemas.events import CloudEvent
from schemas.settings import Settings
from schemas.topics import REQUESTER_ACTIVITY, topic_name
from streams.publisher import SET_ASIDE, Outgoing, Publisher
from tests.integration.streams_support import (
    ACCESS_TOPIC,
    access_event,
    fast_tuning,
    produce,
    query,
    read_topic,
    running_worker,
    wait_for_value,
)

# ~300 bytes of requester-activity record each: 12,000 make one requester's 3.6 MB.
BURST = 12_000


def burst(start: datetime, first: int, count: int) -> list[CloudEvent]:
    """One requester opening ``count`` retrievals across 400 feeds, a millisecond apart."""
    return [
        access_event(
            "retrieval.started",
            f"feed-{index % 400}",
            start + timedelta(milliseconds=index),
            requester_department="lz-jtj",
            requester_user="harvester",
            grant_id=f"g-{index % 400}",
            token_id=f"tok-{index % 400}-harvester",
            action="live",
            client_ip="10.9.0.1",
        )
        for index in range(first, first + count)
    ]


async def test_a_burst_from_one_requester_is_stored_and_the_stream_goes_on_after_a_restart(
    stream_settings: Settings,
) -> None:
    # One batch takes the whole burst, as on a loaded worker catching up.
    tuning = fast_tuning(batch_size=50_000, flush_seconds=2.0, max_poll_records=50_000)
    start = datetime.now(UTC) - timedelta(minutes=30)
    count_sql = "SELECT count() FROM access_events"
    async with running_worker(stream_settings, tuning):
        await produce(stream_settings, ACCESS_TOPIC, burst(start, 0, BURST))
        assert await wait_for_value(stream_settings, count_sql, BURST, timeout=90) == BURST
        # The stream goes on: the next events are stored too.
        await produce(stream_settings, ACCESS_TOPIC, burst(start, BURST, 100))
        assert await wait_for_value(stream_settings, count_sql, BURST + 100) == BURST + 100
    # A restart after such a batch carries on from where it committed.
    async with running_worker(stream_settings, tuning):
        await produce(stream_settings, ACCESS_TOPIC, burst(start, BURST + 100, BURST))
        total = 2 * BURST + 100
        assert await wait_for_value(stream_settings, count_sql, total, timeout=90) == total
        # The per-requester rule saw the burst: its messages were published, each bounded.
        harvest = await wait_for_value(
            stream_settings,
            "SELECT count() > 0 FROM alerts WHERE rule = 'bulk_harvesting'",
            True,
        )
        assert harvest
    assert query(stream_settings, "SELECT uniqExact(event_id) FROM access_events") == [(total,)]
    records = await read_topic(stream_settings, REQUESTER_ACTIVITY, at_least=(total // 500))
    assert len(records) >= total // 500
    assert max(len(record.value) for record in records) < 512 * 1024


async def test_a_message_no_retry_can_publish_is_set_aside_and_the_rest_go_out(
    stream_settings: Settings,
) -> None:
    await ensure_topics(stream_settings)
    topic = topic_name(stream_settings.topic_prefix, REQUESTER_ACTIVITY)
    publisher = Publisher(stream_settings.kafka_bootstrap, retry_max_seconds=1.0)
    await publisher.start()
    before = SET_ASIDE.labels(topic, "too_large")._value.get()
    try:
        started = time.monotonic()
        set_aside = await asyncio.wait_for(
            publisher.publish(
                [
                    Outgoing(topic, b"big", b"x" * 2_000_000),
                    Outgoing(topic, b"small", b"ok"),
                ]
            ),
            timeout=30,
        )
        elapsed = time.monotonic() - started
    finally:
        await publisher.stop()
    assert set_aside == 1
    assert elapsed < 10, "a message over the limit must not be retried"
    assert SET_ASIDE.labels(topic, "too_large")._value.get() == before + 1
    values = [record.value for record in await read_topic(stream_settings, REQUESTER_ACTIVITY, 1)]
    assert values == [b"ok"]


async def test_a_batch_the_broker_refuses_goes_again_a_message_at_a_time(
    stream_settings: Settings,
) -> None:
    """Messages go as one record batch per partition; a batch the broker refuses for good
    (here: larger than the topic's max.message.bytes) is sent again message by message, so
    every message that can pass does, in key order, and only the one that cannot is set
    aside."""
    suffix = "tight"
    topic = topic_name(stream_settings.topic_prefix, suffix)
    admin = AIOKafkaAdminClient(bootstrap_servers=stream_settings.kafka_bootstrap)
    await admin.start()
    try:
        limit = {"max.message.bytes": "20000"}
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=limit)])
    finally:
        await admin.close()
    small = [Outgoing(topic, b"feed-7", os.urandom(250).hex().encode()) for _ in range(120)]
    large = Outgoing(topic, b"feed-8", os.urandom(20_000).hex().encode())  # under our 1 MB
    publisher = Publisher(stream_settings.kafka_bootstrap, retry_max_seconds=1.0)
    await publisher.start()
    before = sum(
        SET_ASIDE.labels(topic, reason)._value.get()
        for reason in ("MessageSizeTooLargeError", "RecordListTooLargeError")
    )
    try:
        set_aside = await asyncio.wait_for(publisher.publish([*small, large]), timeout=60)
    finally:
        await publisher.stop()
    assert set_aside == 1
    after = sum(
        SET_ASIDE.labels(topic, reason)._value.get()
        for reason in ("MessageSizeTooLargeError", "RecordListTooLargeError")
    )
    assert after == before + 1
    values = [record.value for record in await read_topic(stream_settings, suffix, len(small))]
    assert values == [message.value for message in small]
