"""Partitions of message keys as Kafka's default partitioner picks them (murmur2)."""

from __future__ import annotations

import random
import uuid

import pytest
from aiokafka.partitioner import murmur2

from infra.kafka_batches import murmur2_hashes, partitions_of


def _keys() -> list[bytes]:
    draw = random.Random(28181)
    keys = [bytes(draw.getrandbits(8) for _ in range(length)) for length in range(0, 70)]
    keys += [str(uuid.UUID(int=draw.getrandbits(128))).encode() for _ in range(500)]
    keys += ["摄像机-中山桥".encode(), b"\xff\xff\xff\xff\x80", b"a", b"ab", b"abc"]
    return keys


def test_hashes_equal_aiokafkas_murmur2_for_every_length_and_tail() -> None:
    keys = _keys()
    assert murmur2_hashes(keys).tolist() == [murmur2(key) & 0x7FFFFFFF for key in keys]


@pytest.mark.parametrize("count", [1, 3, 6, 12])
def test_partitions_are_the_default_partitioners(count: int) -> None:
    keys = _keys()
    partitions = list(range(count))
    expected = [partitions[(murmur2(key) & 0x7FFFFFFF) % count] for key in keys]
    assert partitions_of(keys, partitions) == expected


def test_keyless_messages_are_spread_and_keyed_ones_stay_put() -> None:
    keys: list[bytes | None] = [None, b"feed-1", None, None, b"feed-2", None]
    chosen = partitions_of(keys, [0, 1, 2, 3])
    assert chosen[1] == (murmur2(b"feed-1") & 0x7FFFFFFF) % 4
    assert chosen[4] == (murmur2(b"feed-2") & 0x7FFFFFFF) % 4
    keyless = [chosen[position] for position in (0, 2, 3, 5)]
    assert len(set(keyless)) == 4  # four in turn over four partitions
    assert partitions_of([], [0, 1]) == []
