"""Liveness reports from gateways and devices: batches of (feed, status, seen_at).

Reports never write the registry (ARCHITECTURE.md, data flow step 7): each item is checked
against this process's in-memory feed index (the feed exists, is not retired, belongs to the
caller's department) and each accepted one goes straight to the heartbeats topic as a
``feedgrid.heartbeat`` CloudEvent keyed by feed id. The worker keeps last-seen state and
decides online/offline; only its transitions come back, on feed-status, and
``registry_api/feeds/liveness.py`` writes them to the registry.

Cost: gateways send batches of thousands, tens of thousands of reports a second in all. So
the events are written by ``schemas.events.encode_cloud_event`` with exactly the keys
``HeartbeatData`` has (no model per item), partitioned the way aiokafka and the Java client
partition a key, and handed to the producer as one record batch per partition.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from datetime import timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from infra.kafka_batches import delivered, send_partitioned
from infra.kafka_producer import KafkaUnavailable, SharedProducer
from registry_api.errors import ApiError
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.principal import Principal
from schemas.events import SCHEMA_HEARTBEAT_V1, EventType, encode_cloud_event, utcnow
from schemas.feeds import HeartbeatBatch, HeartbeatReject, HeartbeatResult

CLOCK_SKEW = timedelta(minutes=5)
# The whole hand-over to Kafka (start, topic metadata, acknowledgement) gets this long.
PUBLISH_TIMEOUT_SECONDS = 5.0
RETRY_AFTER_SECONDS = 5
# Reports encoded or appended between two turns of the event loop: a batch may hold 20,000,
# and one pass over it held the loop for 0.4-0.5 s (the demo gateways' first round, measured
# by the loop watch), delaying every other request meanwhile.
YIELD_EVERY = 1_000


class HeartbeatsUnavailable(ApiError):
    status_code = 503
    code = "heartbeats_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(
            "liveness reports cannot be taken now: the event broker does not answer "
            f"({reason}). Nothing of this batch was recorded; send it again later.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


Encoded = tuple[bytes, bytes]  # (key, value) of one Kafka record


async def record_heartbeats(
    *,
    index: FeedIndex,
    producer: SharedProducer,
    topic: str,
    topics_ready: asyncio.Event,
    principal: Principal,
    batch: HeartbeatBatch,
) -> HeartbeatResult:
    """Checks the batch and publishes the accepted reports; all of them or none (503)."""
    records, rejected = await encode_reports(index=index, principal=principal, batch=batch)
    if records:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                kafka = await producer.get()
                await topics_ready.wait()
                await publish(kafka, topic, records)
        except KafkaUnavailable as error:
            raise HeartbeatsUnavailable(str(error)) from error
        except TimeoutError as error:
            raise HeartbeatsUnavailable(
                f"no acknowledgement within {PUBLISH_TIMEOUT_SECONDS:g} s"
            ) from error
        except KafkaError as error:
            raise HeartbeatsUnavailable(type(error).__name__) from error
    # Transitions are the worker's to decide now; the field stays for older clients.
    return HeartbeatResult(accepted=len(records), status_changed=0, rejected=rejected)


async def encode_reports(
    *, index: FeedIndex, principal: Principal, batch: HeartbeatBatch
) -> tuple[list[Encoded], list[HeartbeatReject]]:
    """The accepted reports as Kafka records, and the refused ones with their reasons (the
    event loop gets a turn every ``YIELD_EVERY`` reports)."""
    now = utcnow()
    latest_allowed = now + CLOCK_SKEW
    reporter = batch.reporter or principal.subject
    department = None if principal.is_city_admin else principal.department
    known = index.owners_of({item.feed_id for item in batch.items})
    event_ids = _event_ids(len(batch.items))
    records: list[Encoded] = []
    rejected: list[HeartbeatReject] = []
    for position, item in enumerate(batch.items):
        if position and not position % YIELD_EVERY:
            await asyncio.sleep(0)
        feed_id = item.feed_id
        seen_at = item.seen_at or now
        found = known.get(feed_id)
        problem = None
        if found is None:
            problem = "no such feed"
        elif department is not None and found[0] != department:
            problem = f"feed belongs to {found[0]}; a gateway reports its own department's feeds"
        elif found[1]:
            problem = "the feed is retired"
        elif seen_at > latest_allowed:
            problem = "seen_at is in the future"
        if problem:
            rejected.append(HeartbeatReject(index=position, feed_id=feed_id, message=problem))
            continue
        value = encode_cloud_event(
            id=event_ids[position],
            type=EventType.HEARTBEAT,
            time=now,
            subject=feed_id,
            dataschema=SCHEMA_HEARTBEAT_V1,
            data={
                "feed_id": feed_id,
                "status": item.status,
                "seen_at": seen_at,
                "reporter": reporter,
            },
        )
        records.append((feed_id.encode(), value))
    return records, rejected


def _event_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text, five times cheaper than ``uuid4()``."""
    raw = os.urandom(16 * count).hex()
    ids = []
    for start in range(0, 32 * count, 32):
        h = raw[start : start + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return ids


async def publish(producer: AIOKafkaProducer, topic: str, records: Sequence[Encoded]) -> None:
    """Sends the records as record batches, one per partition at a time
    (``infra.kafka_batches``), and waits for the broker's acks."""
    timestamp = int(time.time() * 1000)
    deliveries = await send_partitioned(producer, topic, records, timestamp_ms=timestamp)
    await delivered(deliveries)
