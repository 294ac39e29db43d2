"""What every worker knows of every feed: the few attributes that enrich its events.

The batch path reads access events and heartbeats with a consumer group of its own, so a
worker's partitions of those topics are not the partitions of any Faust table. Feed metadata
is small (a million feeds fit in a few hundred MiB), so every worker keeps all of it: a
group-less consumer reads the compacted feed-metadata topic from its beginning at start, and
then follows it. The batch path waits until the catalog has caught up with the topic's end as
of its start (bounded by ``catch_up_seconds``), so a restart never enriches with nothing.

Each entry is a tuple of interned strings: a feed costs about as much as its dictionary slot.
A version orders the states of a feed (the registry's revision), so a replay or a reordered
read never puts an older state back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Gauge

from infra.foreground import give_way
from streams.dead_letter import InvalidMessage
from streams.decoding import decode_feed_fields
from streams.feeds import region_and_industry, sharing_class_of

log = logging.getLogger("feedgrid.streams.catalog")

CATALOG_FEEDS = Gauge("feedgrid_stream_catalog_feeds", "Feeds known to this worker's catalog")


class FeedFacts(NamedTuple):
    version: int
    owner_department: str
    kind: str
    region: str
    industry: str
    sharing_class: str


class FeedCatalog:
    def __init__(self, bootstrap: str, topic: str, *, catch_up_seconds: float = 120.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.catch_up_seconds = catch_up_seconds
        self._facts: dict[str, FeedFacts] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()

    def get(self, feed_id: str) -> FeedFacts | None:
        return self._facts.get(feed_id)

    def __len__(self) -> int:
        return len(self._facts)

    def apply(self, raw: bytes | None) -> bool:
        """Takes one feed-metadata message; False when it is not a valid feed event."""
        if raw is None:
            return False
        try:
            data = decode_feed_fields(raw).data
        except InvalidMessage:
            return False
        version = data.state_version
        current = self._facts.get(data.id)
        if current is not None and current.version > version:
            return True
        region, industry = region_and_industry(data)
        intern = sys.intern
        self._facts[data.id] = FeedFacts(
            version,
            intern(data.owner),
            intern(data.kind),
            intern(region),
            intern(industry),
            intern(sharing_class_of(data)),
        )
        return True

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 (a new topic)
            partitions = consumer.partitions_for_topic(self.topic) or set()
        assigned = [TopicPartition(self.topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        self._task = asyncio.create_task(self._follow(consumer, ends), name="feed-catalog")

    async def wait_caught_up(self) -> None:
        try:
            await asyncio.wait_for(self.caught_up.wait(), self.catch_up_seconds)
        except TimeoutError:
            log.warning(
                "feed catalog not caught up after %.0f s (%d feeds); enrichment goes on with it",
                self.catch_up_seconds,
                len(self),
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _follow(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        started = time.monotonic()
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        if not remaining:
            self.caught_up.set()
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker away: the consumer reconnects by itself
                log.warning("feed catalog cannot read %s yet: %s", self.topic, error)
                await asyncio.sleep(1.0)
                continue
            started = time.perf_counter()
            for tp, records in batches.items():
                for record in records:
                    self.apply(record.value)
                if remaining and tp in remaining and records[-1].offset + 1 >= remaining[tp]:
                    del remaining[tp]
            CATALOG_FEEDS.set(len(self._facts))
            if not remaining and not self.caught_up.is_set():
                self.caught_up.set()
                log.info(
                    "feed catalog caught up: %d feeds in %.1f s",
                    len(self._facts),
                    time.monotonic() - started,
                )
            if not batches:
                await asyncio.sleep(0)
            else:  # embedded in the API's process: its requests first (infra/foreground)
                await give_way("feed-catalog", time.perf_counter() - started)
