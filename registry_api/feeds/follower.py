"""Keeps this API replica's feed index in step with writes made elsewhere (scale mode).

Every feed write, on any replica, and every liveness change a stream worker records, commits
an outbox row; the active relay publishes it to ``feed-metadata`` with the feed's full state
and revision. Each replica follows that topic with its own group-less consumer and applies
the events to its index, where the revision rule makes its own writes (already applied),
replays and the overlap with the database load harmless.

Where to start reading: the wall time just before the index is loaded from the database,
minus a margin for clock skew between replicas. ``offsets_for_times`` turns it into one
offset per partition, so a replica needs no stored offsets, and Kafka being down at start
only delays the follower: it keeps retrying and catches up from the same point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge

from infra.kafka_admin import topic_partitions
from registry_api.feeds.index.adapter import record_from_document
from registry_api.feeds.index.records import FeedRecord
from registry_api.feeds.liveness import read_liveness
from registry_api.feeds.rendered import render_documents
from registry_api.feeds.spatial import FeedIndex
from schemas.events import EventType
from schemas.settings import Settings
from schemas.topics import FEED_METADATA, FEED_STATUS, topic_name

log = logging.getLogger("feedgrid.feeds.follower")

CLOCK_SKEW_MARGIN_SECONDS = 60.0
FETCH_RECORDS = 10_000

FOLLOWED = Counter(
    "feedgrid_index_followed_events_total", "Feed-metadata events applied to this replica's index"
)
UNREADABLE = Counter(
    "feedgrid_index_unreadable_events_total",
    "Feed-metadata events the index follower could not read (skipped; workers dead-letter them)",
)
FOLLOWER_LAG = Gauge(
    "feedgrid_index_follower_lag_seconds",
    "Age of the newest feed-metadata event this replica's index has applied",
)


class IndexFollower:
    """Started before the index loads (it notes the time), stopped after it."""

    def __init__(self, settings: Settings, index: FeedIndex) -> None:
        self.settings = settings
        self.index = index
        self.topic = topic_name(settings.topic_prefix, FEED_METADATA)
        # ``last_seen`` moves without a revision (no feed-metadata event): every replica reads
        # them from feed-status too, so its rendered documents show what the database says
        self.status_topic = topic_name(settings.topic_prefix, FEED_STATUS)
        self._since_ms = 0
        self._task: asyncio.Task[None] | None = None
        self.following = asyncio.Event()  # set once positioned on every partition

    async def start(self) -> None:
        self._since_ms = int((time.time() - CLOCK_SKEW_MARGIN_SECONDS) * 1000)
        self._task = asyncio.create_task(self._run(), name="feed-index-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id="feedgrid-index-follower",
            )
            try:
                await consumer.start()
                await self._position(consumer)
                delay = 0.5
                await self._follow(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("feed index follower waiting for kafka: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        # the topic may not exist yet: the API creates it in the background
        bootstrap = self.settings.kafka_bootstrap
        assigned: list[TopicPartition] = []
        for topic in (self.topic, self.status_topic):
            while not (partitions := await topic_partitions(bootstrap, topic)):
                await asyncio.sleep(1.0)
            assigned += [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        # The ends first: a partition with no message since ``_since_ms`` starts at its end as
        # it was before that answer, so a message written between the two is not skipped.
        ends = await consumer.end_offsets(assigned)
        found = await consumer.offsets_for_times({tp: self._since_ms for tp in assigned})
        for tp in assigned:
            position = found.get(tp)
            consumer.seek(tp, position.offset if position is not None else ends[tp])
        self.following.set()
        log.info("feed index follows %s from %d ms", self.topic, self._since_ms)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=FETCH_RECORDS)
            records: list[FeedRecord] = []
            renderings: list[bytes] = []
            seen: dict[str, datetime] = {}
            newest_ms = 0
            for partition, messages in batches.items():
                if partition.topic == self.status_topic:
                    _fold_seen(seen, messages)
                    continue
                for message in messages:
                    parsed = _parse(message.value, self.index)
                    if parsed is None:
                        UNREADABLE.inc()
                        continue
                    records.append(parsed[0])
                    renderings.append(parsed[1])
                    newest_ms = max(newest_ms, message.timestamp)
            if records:
                # one batch: a bulk import elsewhere becomes one merge here, not thousands
                self.index.apply(records, renderings)
                FOLLOWED.inc(len(records))
                FOLLOWER_LAG.set(max(0.0, time.time() - newest_ms / 1000))
            if seen:
                self.index.rendered.saw(seen)


def _fold_seen(seen: dict[str, datetime], messages: list[Any]) -> None:
    """The newest ``last_seen`` of each feed in feed-status messages (unreadable ones are the
    liveness applier's to count)."""
    for message in messages:
        liveness = read_liveness(message.value)
        if liveness is None or liveness.last_seen is None:
            continue
        known = seen.get(liveness.feed_id)
        if known is None or known < liveness.last_seen:
            seen[liveness.feed_id] = liveness.last_seen


def _parse(value: bytes | None, index: FeedIndex) -> tuple[FeedRecord, bytes] | None:
    """The index record and rendering of the feed an event carries, or None if unreadable. A
    status change (the storm of a city coming online) is spliced into the rendering of the
    revision before when the index has it, rather than rendered again."""
    if not value:
        return None
    try:
        envelope: dict[str, Any] = orjson.loads(value)
        document: dict[str, Any] = envelope["data"]
        rendering = None
        if envelope["type"] == EventType.FEED_STATUS:
            rendering = index.status_rendering(document)
        if rendering is None:
            rendering = render_documents([document], index.owners)[0]
        return record_from_document(document), rendering
    except Exception:  # a malformed event must not stop the replica from following
        return None
