"""Record batches handed to the real broker by many callers at once (``infra.kafka_batches``)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from infra.kafka_batches import delivered, send_partitioned
from infra.kafka_producer import SharedProducer
from tests.topic_prefixes import new_topic_prefix

pytestmark = pytest.mark.kafka

PARTITIONS = 6
CALLERS = 12
MESSAGES = 1_000
SECONDS = 6.0


async def test_callers_sharing_partitions_are_all_delivered_without_a_refused_hand_over(
    kafka_bootstrap: str,
) -> None:
    """Twelve callers, each sending 1,000 keyed messages over the same six partitions again
    and again, as the heartbeat endpoint's requests do under load. aiokafka's own wait for a
    partition's queue gave up with ``KafkaTimeoutError`` after a fraction of a second here
    (the heartbeat benchmark's 503s); every call must now be delivered, and every message
    be on the broker once, on the partition of its key."""
    topic = f"{new_topic_prefix()}batches"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    shared = SharedProducer(kafka_bootstrap, client_id="test-kafka-batches")
    producer = await shared.get()
    value = b"v" * 300
    sent: dict[bytes, int] = {}
    failures: list[BaseException] = []
    deadline = time.monotonic() + SECONDS

    async def caller(number: int) -> None:
        call = 0
        while time.monotonic() < deadline:
            keys = [f"feed-{number}-{call}-{index}".encode() for index in range(MESSAGES)]
            call += 1
            try:
                await delivered(await send_partitioned(producer, topic, [(k, value) for k in keys]))
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(error)
            else:
                sent.update(dict.fromkeys(keys, 1))

    try:
        await asyncio.gather(*(caller(number) for number in range(CALLERS)))
    finally:
        await shared.stop()
    assert failures == [], f"{len(failures)} calls failed, first: {failures[0]!r}"
    assert len(sent) >= CALLERS * MESSAGES * 2  # each caller went round more than once

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, partition) for partition in range(PARTITIONS)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        assert sum(ends.values()) == len(sent)
        received: dict[bytes, int] = {}
        read_by = time.monotonic() + 60
        while sum(received.values()) < len(sent) and time.monotonic() < read_by:
            for part, records in (await consumer.getmany(timeout_ms=1_000)).items():
                for record in records:
                    assert record.key is not None
                    received[record.key] = received.get(record.key, 0) + 1
                    assert part.partition == (murmur2(record.key) & 0x7FFFFFFF) % PARTITIONS
    finally:
        await consumer.stop()
    assert received.keys() == sent.keys()
    assert set(received.values()) == {1}
