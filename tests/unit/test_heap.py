"""The collector's tuning (infra/heap.py): thresholds set, every pause measured, start-up's
objects frozen out of the full passes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from infra.heap import (
    DEFAULT_THRESHOLDS,
    YOUNG_THRESHOLD,
    eager_collection,
    settle,
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
