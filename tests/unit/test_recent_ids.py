"""The sink's memory of ids stored lately (streams/recent_ids.py) answers as a plain set of
the latest generations would, across run merges and generation turnovers."""

from __future__ import annotations

import numpy as np

from streams.recent_ids import RecentIds


def test_lookups_answer_as_the_latest_two_generations_would() -> None:
    rng = np.random.default_rng(606)
    recent = RecentIds(per_generation=1_000, max_runs=3)
    generations: list[set[int]] = [set(), set()]
    filled = 0
    for _ in range(60):
        batch = rng.integers(0, 1 << 63, size=int(rng.integers(1, 120)), dtype=np.uint64)
        known = generations[0] | generations[1]
        # half of what is asked was stored (some long ago, beyond the two generations)
        asked = (
            np.concatenate([batch, rng.choice(np.array(sorted(known), np.uint64), 50)])
            if known
            else batch
        )
        assert recent.contains(asked).tolist() == [int(value) in known for value in asked]
        recent.add(batch)
        generations[1] |= {int(value) for value in batch}
        filled += batch.size
        if filled >= 1_000:
            generations, filled = [generations[1], set()], 0
        assert len(recent) == sum(len(generation) for generation in generations)
    assert recent.contains(np.array([], np.uint64)).size == 0


def test_an_empty_memory_knows_nothing_and_the_largest_hash_is_found() -> None:
    recent = RecentIds()
    largest = np.array([(1 << 64) - 1], np.uint64)
    assert not recent.contains(largest).any()
    recent.add(largest)
    recent.add(np.array([], np.uint64))
    assert recent.contains(np.array([(1 << 64) - 1, 0], np.uint64)).tolist() == [True, False]
