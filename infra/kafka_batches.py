"""Producing many messages at once: one record batch per topic partition, handed over whole.

aiokafka's per-message ``send`` costs a future, a partitioner call and an accumulator lookup
for every message, and its partitioner's murmur2 is pure Python (4.5 us a key). Here the keys
of a call are hashed together with numpy (the same murmur2 as Kafka's Java client and
aiokafka, so a key lands on the partition it would have anyway), each partition's messages go
into one ``BatchBuilder`` and each full builder is sent as it is: 4.9 us of CPU a message
against 16.6 through ``send`` (50,000 messages of ~400 bytes, one producer, lz4).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

# Every FeedGrid producer's compression. aiokafka compresses lz4 at level 9 (LZ4-HC): on a
# worker's batch of 2,000 liveness events (646 KB) 2.7 ms and 86 KB, against zstd's (level 3)
# 1.0 ms and 51 KB; on the relay's access events twenty times the CPU, a sixth of an access
# request. Consumers read either.
COMPRESSION = "zstd"

_SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)
# Messages appended between two turns of the event loop.
YIELD_EVERY = 2_000
_spread = itertools.count()  # partitions of keyless messages, in turn
# Each producer's partitions, one hand-over at a time (see ``_send``).
_turns: weakref.WeakKeyDictionary[AIOKafkaProducer, dict[tuple[str, int], asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def murmur2_hashes(keys: Sequence[bytes]) -> np.ndarray[Any, np.dtype[np.uint32]]:
    """Kafka's murmur2 of each key, masked positive as its default partitioner uses it
    (``murmur2(key) & 0x7fffffff``): computed for all keys of one length at once."""
    hashes = np.empty(len(keys), dtype=np.uint32)
    by_length: dict[int, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        by_length[len(key)].append(position)
    for length, positions in by_length.items():
        data = np.frombuffer(b"".join([keys[p] for p in positions]), dtype=np.uint8)
        data = data.reshape(len(positions), length)
        h = np.full(len(positions), (_SEED ^ length) & 0xFFFFFFFF, dtype=np.uint32)
        blocks = length // 4
        if blocks:
            words = np.ascontiguousarray(data[:, : blocks * 4]).view("<u4")
            for block in range(blocks):
                k = words[:, block] * _M
                k ^= k >> np.uint32(24)
                k *= _M
                h *= _M
                h ^= k
        tail, base = length % 4, blocks * 4
        if tail == 3:
            h ^= data[:, base + 2].astype(np.uint32) << np.uint32(16)
        if tail >= 2:
            h ^= data[:, base + 1].astype(np.uint32) << np.uint32(8)
        if tail >= 1:
            h ^= data[:, base].astype(np.uint32)
            h *= _M
        h ^= h >> np.uint32(13)
        h *= _M
        h ^= h >> np.uint32(15)
        hashes[positions] = h & np.uint32(0x7FFFFFFF)
    return hashes


def partitions_of(keys: Sequence[bytes | None], partitions: Sequence[int]) -> list[int]:
    """The partition of each key among ``partitions`` (sorted) as the default partitioner
    picks it; keyless messages are spread over them in turn."""
    count = len(partitions)
    hashes = murmur2_hashes([key for key in keys if key is not None])
    slots = iter((hashes % np.uint32(count)).tolist())
    return [partitions[next(slots) if key is not None else next(_spread) % count] for key in keys]


Delivery = tuple[list[int], "asyncio.Future[Any]"]


async def send_partitioned(
    producer: AIOKafkaProducer,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes]],
    *,
    timestamp_ms: int | None = None,
) -> list[Delivery]:
    """Hands ``messages`` (key, value) to the producer as record batches, one per partition
    at a time; returns each batch's delivery (resolved when the broker acknowledged it, or
    failed) with the positions of the messages it carries. The caller awaits them.

    A message larger than a batch goes in a batch of its own (a builder always takes its
    first record); a message larger than the producer's ``max_request_size`` fails its
    batch: the caller checks sizes first. Cancelled, the batches already handed over are
    still delivered; their outcome is not awaited."""
    partitions = sorted(await producer.partitions_for(topic))
    chosen = partitions_of([key for key, _ in messages], partitions)
    builders: dict[int, tuple[BatchBuilder, list[int]]] = {}
    deliveries: list[Delivery] = []
    try:
        for position, ((key, value), partition) in enumerate(zip(messages, chosen, strict=True)):
            if position and not position % YIELD_EVERY:
                await asyncio.sleep(0)
            entry = builders.get(partition)
            if entry is None:
                entry = builders[partition] = (producer.create_batch(), [])
            builder, carried = entry
            if builder.append(key=key, value=value, timestamp=timestamp_ms) is None:  # full
                deliveries.append((carried, await _send(producer, builder, topic, partition)))
                builder, carried = builders[partition] = (producer.create_batch(), [])
                builder.append(key=key, value=value, timestamp=timestamp_ms)
            carried.append(position)
        for partition, (builder, carried) in builders.items():
            if carried:
                deliveries.append((carried, await _send(producer, builder, topic, partition)))
    except BaseException:
        abandon(deliveries)
        raise
    return deliveries


async def delivered(deliveries: Sequence[Delivery]) -> None:
    """Waits until the broker acknowledged every batch (the first failure is raised).
    Cancelled or failed, the outcome of the others is not awaited."""
    try:
        await asyncio.gather(*(delivery for _, delivery in deliveries))
    except BaseException:
        abandon(deliveries)
        raise


def abandon(deliveries: Sequence[Delivery]) -> None:
    """Deliveries given up on (cancelled, or another failed first): their outcome is not
    awaited, and must not be logged as an exception nobody retrieved."""
    for _, delivery in deliveries:
        delivery.add_done_callback(_ignore_outcome)


async def _send(
    producer: AIOKafkaProducer, builder: BatchBuilder, topic: str, partition: int
) -> asyncio.Future[Any]:
    """Hands one closed batch to the producer, waiting for this partition's turn first.

    The producer's queue holds one batch per partition; ``send_batch`` waits for it to be
    taken, and every caller waiting on the same partition wakes each time and tries again.
    aiokafka (0.14 here; its open PR 814 reworks this wait) takes all the time waited so far off
    its timeout at every such wake, so with a few callers on one partition the wait gives up
    with ``KafkaTimeoutError`` after a fraction of ``request_timeout_ms`` (8 callers of 1,000
    messages on 6 partitions: one hand-over in ten refused after 0.6 s). Waiting our turn
    here leaves one caller per partition in ``send_batch``, which then waits once."""
    builder.close()
    turns = _turns.setdefault(producer, {})
    turn = turns.get((topic, partition))
    if turn is None:
        turn = turns[(topic, partition)] = asyncio.Lock()
    async with turn:
        delivery: asyncio.Future[Any] = await producer.send_batch(
            builder, topic, partition=partition
        )
    return delivery


def _ignore_outcome(delivery: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        delivery.exception()
