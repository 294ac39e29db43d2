"""The ids the sink stored lately, as 64-bit hashes: is this batch's event one of them?

The outbox relay may publish an event twice (a crash between its send and its mark), and the
copy arrives at a higher offset than anything the sink has stored, so the sink looks every
batch's ids up here before it trusts the offsets. Two generations are kept: the current one
fills up to ``per_generation`` hashes, then becomes the previous one and the older one is
dropped, so between ``per_generation`` and twice that many of the latest ids are known.

Each generation is a few sorted runs (one per batch, merged when there are more than
``max_runs``), looked up by binary search: a batch costs its own size times a few logarithms.
The first version concatenated both generations and ran ``np.isin`` over them for every batch,
sorting up to a million hashes each time: measured, a sixth of the embedded worker's time
while access requests came in.
"""

from __future__ import annotations

import numpy as np

RECENT_IDS_PER_GENERATION = 500_000
MAX_RUNS = 8


class RecentIds:
    def __init__(
        self, per_generation: int = RECENT_IDS_PER_GENERATION, max_runs: int = MAX_RUNS
    ) -> None:
        self.per_generation = per_generation
        self.max_runs = max_runs
        self._previous: list[np.ndarray] = []
        self._current: list[np.ndarray] = []
        self._current_size = 0

    def __len__(self) -> int:
        return sum(run.size for run in (*self._previous, *self._current))

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A boolean per hash: stored lately."""
        found = np.zeros(hashes.size, dtype=bool)
        for run in (*self._previous, *self._current):
            places = np.searchsorted(run, hashes)
            inside = places < run.size
            found[inside] |= run[places[inside]] == hashes[inside]
        return found

    def add(self, hashes: np.ndarray) -> None:
        if not hashes.size:
            return
        self._current.append(np.sort(hashes))
        self._current_size += hashes.size
        if self._current_size >= self.per_generation:
            self._previous = [_merged(self._current)]
            self._current, self._current_size = [], 0
        elif len(self._current) > self.max_runs:
            self._current = [_merged(self._current)]


def _merged(runs: list[np.ndarray]) -> np.ndarray:
    # A stable sort merges the runs it finds (timsort) instead of sorting from scratch.
    return np.sort(np.concatenate(runs), kind="stable")
