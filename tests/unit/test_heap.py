"""The collector's tuning (infra/heap.py): thresholds set, every pause measured, start-up's
objects frozen out of the full passes, freed memory handed back to the system."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from infra.heap import (
    DEFAULT_THRESHOLDS,
    YOUNG_THRESHOLD,
    eager_collection,
    garbage_collector_paused,
    let_go,
    return_free_memory,
    settle,
    settle_when_resumed,
    tune_collector,
)


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _pauses(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "feedgrid_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def test_the_thresholds_are_set_and_each_collection_is_measured(collector: None) -> None:
    tune_collector()
    tune_collector()  # twice: still one callback
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    before = _pauses(2)
    gc.collect()
    assert _pauses(2) == before + 1


def test_settling_takes_what_lives_now_out_of_the_collectors_sight(collector: None) -> None:
    kept = [[index] for index in range(10_000)]  # tracked objects, alive
    gc.unfreeze()
    settle("test")
    assert gc.get_freeze_count() >= len(kept)
    assert REGISTRY.get_sample_value("feedgrid_gc_frozen_objects") == gc.get_freeze_count()
    probe = kept[-1]
    assert gc.is_tracked(probe)
    assert not any(seen is probe for seen in gc.get_objects())  # no full pass looks at it


def test_eager_collection_uses_the_defaults_inside_and_collects_when_the_last_one_ends(
    collector: None,
) -> None:
    tune_collector()
    with eager_collection():
        assert gc.get_threshold() == DEFAULT_THRESHOLDS
        with eager_collection():  # two bulk imports at once
            pass
        assert gc.get_threshold() == DEFAULT_THRESHOLDS  # the first still runs
        before = _pauses(2)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert _pauses(2) == before + 1  # the full collection after the last one
    with pytest.raises(RuntimeError), eager_collection():
        raise RuntimeError("the import failed")
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def _seen_by_the_collector(probe: object) -> bool:
    return any(seen is probe for seen in gc.get_objects())


def test_a_pause_nests_and_the_last_block_out_resumes_the_collector(collector: None) -> None:
    assert gc.isenabled()
    with garbage_collector_paused():
        with garbage_collector_paused():  # a catalog inside a bulk import
            assert not gc.isenabled()
        assert not gc.isenabled()
        kept = [0]
    assert gc.isenabled()
    assert _seen_by_the_collector(kept)  # nothing frozen unless asked
    with pytest.raises(RuntimeError), garbage_collector_paused():
        raise RuntimeError("the catalog failed")
    assert gc.isenabled()


def test_work_that_built_what_lives_on_is_frozen_when_the_collector_resumes(
    collector: None,
) -> None:
    with garbage_collector_paused():
        with garbage_collector_paused():
            built = [[index] for index in range(1_000)]
            settle_when_resumed("test")
        assert _seen_by_the_collector(built)  # not yet: the outer block still runs
    assert gc.isenabled()
    assert not _seen_by_the_collector(built)  # frozen, never traversed
    assert not _seen_by_the_collector(built[-1])
    with garbage_collector_paused():
        later = [1]
    assert _seen_by_the_collector(later)  # the request was for that pause only
    settle_when_resumed("no pause")  # outside a pause: nothing to do, nothing kept for later
    with garbage_collector_paused():
        after = [2]
    assert _seen_by_the_collector(after)


async def test_letting_go_empties_the_lists_with_the_loop_free_between_chunks() -> None:
    rows = [{"row": n} for n in range(10_000)]
    pairs = [(n, [n]) for n in range(3_000)]
    turns = 0

    async def beside() -> None:
        nonlocal turns
        while rows or pairs:
            turns += 1
            await asyncio.sleep(0)

    watching = asyncio.create_task(beside())
    await let_go(rows, pairs, chunk=1_000)
    await watching
    assert rows == [] and pairs == []
    assert turns >= 10 + 3 - 1  # the other task ran after every chunk but the last


def _resident() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_memory_freed_in_another_thread_goes_back_to_the_system() -> None:
    # A thread's allocations come from its own arena (as the database driver's rows do):
    # freed, they stay resident until malloc_trim hands the pages back.
    made: list[list[bytes]] = []

    def make() -> None:
        made.append([bytes(600) + bytes([n % 256]) for n in range(200_000)])

    worker = threading.Thread(target=make)
    worker.start()
    worker.join()
    survivors = made[0][::50]  # a few blocks still alive between the freed ones
    made.clear()
    before = _resident()
    returned = return_free_memory()
    assert returned >= 50 * 2**20  # of ~125 MiB freed
    assert _resident() <= before - returned // 2
    assert len(survivors) == 4_000 and survivors[1][600] == 50
