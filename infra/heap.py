"""Python's cyclic garbage collector, tuned for a server with a large heap that lives long.

The collector's defaults (a young collection every 700 net allocations, a full one after ten
middle ones) suit a short script. A FeedGrid process holds hundreds of thousands of tracked
objects for its whole life (routes, the feed catalog, the liveness state of every feed,
caches) and churns through short-lived ones in batches (a heartbeat batch of 500 decoded
reports, an access request's 300 events). At 700 allocations a young collection falls in the
middle of such a batch, its objects survive it and are promoted, and the promotions soon
trigger a full collection: measured on the demo city (60,000 feeds, gateways reporting), a
full pass every ~8 s of 100-155 ms that freed almost nothing, during which no request was
answered (the `/healthz` p99 at 50/s was 75-123 ms, its maximum 267 ms).

So: young collections every 20,000 net allocations (a batch dies before it is looked at, and
each pass still takes a few milliseconds), and what start-up and the demo's loading built is
moved out of the collector's sight with ``gc.freeze()`` once it is built (it lives as long as
the process; objects that become garbage are still freed by reference counting). Each
collection's pause is measured (``feedgrid_gc_pause_seconds``, by generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("feedgrid.heap")

YOUNG_THRESHOLD = 20_000  # net allocations of tracked objects between young collections
MIDDLE_THRESHOLD = 10  # young collections per middle one (the default)
OLD_THRESHOLD = 10  # middle collections before a full one is considered (the default)
DEFAULT_THRESHOLDS = (700, 10, 10)  # Python's

PAUSES = Histogram(
    "feedgrid_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation (nothing else runs meanwhile)",
    ["generation"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
RETURNED = Counter(
    "feedgrid_heap_returned_bytes_total",
    "Bytes of freed heap handed back to the operating system by malloc_trim (resident memory)",
)
FROZEN = Gauge(
    "feedgrid_gc_frozen_objects",
    "Objects moved out of the collector's sight by gc.freeze() (start-up, the demo's loading)",
)

_started: list[float] = []
_paused = [0.0]  # seconds of every collection measured so far


@dataclass
class _Eager:
    blocks: int = 0  # eager_collection() blocks running now
    before: tuple[int, ...] = DEFAULT_THRESHOLDS  # the thresholds to restore after the last


_eager = _Eager()


def _measure(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        pause = time.perf_counter() - _started.pop()
        _paused[0] += pause
        PAUSES.labels(str(info["generation"])).observe(pause)


def pause_seconds_total() -> float:
    """Seconds the measured collections have paused this process (since tune_collector())."""
    return _paused[0]


def tune_collector() -> None:
    """Sets the thresholds above and measures every collection (idempotent)."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    if _measure not in gc.callbacks:
        gc.callbacks.append(_measure)


@contextlib.contextmanager
def eager_collection() -> Iterator[None]:
    """Around work that makes much cyclic garbage at once (a bulk import of tens of thousands
    of features): the collector's default thresholds while it runs, then the thresholds of
    before and a full collection. With the raised thresholds the garbage of a 60,000-feature
    call outlived it until a later full pass, and each call's peak stood on the last one's
    (measured at 400,000 feeds: peak resident memory 1,281 MiB with the defaults, 1,417 MiB
    raised, 1,331 MiB like this). Blocks may overlap: the last one out restores."""
    if _eager.blocks == 0:
        _eager.before = gc.get_threshold()
        gc.set_threshold(*DEFAULT_THRESHOLDS)
    _eager.blocks += 1
    try:
        yield
    finally:
        _eager.blocks -= 1
        if _eager.blocks == 0:
            gc.set_threshold(*_eager.before)
            gc.collect()
            return_free_memory()


def settle(reason: str) -> None:
    """Moves every object alive now out of the collector's sight: call it when something
    that lives as long as the process has just been built."""
    gc.freeze()
    return_free_memory()  # what building it freed, handed back (see there)
    frozen = gc.get_freeze_count()  # walks them all: ~10 ms a million
    FROZEN.set(frozen)
    log.debug("heap settled", extra={"reason": reason, "frozen": frozen})


@dataclass
class _Pause:
    blocks: int = 0  # garbage_collector_paused() blocks running now
    settle_reason: str | None = None  # set by settle_when_resumed()


_pause = _Pause()


@contextlib.contextmanager
def garbage_collector_paused() -> Iterator[None]:
    """The cyclic collector paused around work that makes many young objects at once (a bulk
    import, a catalog): reference counting still frees memory. Blocks nest; the last one out
    resumes the collector, first freezing what is alive where a block asked for it
    (:func:`settle_when_resumed`). Left as found where someone else disabled it."""
    if _pause.blocks == 0 and not gc.isenabled():
        yield
        return
    _pause.blocks += 1
    gc.disable()
    try:
        yield
    finally:
        _pause.blocks -= 1
        if _pause.blocks == 0:
            reason, _pause.settle_reason = _pause.settle_reason, None
            if reason is not None:
                gc.freeze()  # not counted here (see settle): this is on the event loop
                log.debug("heap settled", extra={"reason": reason})
            gc.enable()


def settle_when_resumed(reason: str) -> None:
    """Inside :func:`garbage_collector_paused`, for work that built what lives on (a catalog
    of tens of thousands of channels: the index's new base, records and documents): when the
    collector resumes, everything alive is frozen (as :func:`settle`) instead of traversed.

    Everything allocated during a pause is young: the first collection after it looked at all
    of it, and after a 50,000-channel catalog held the event loop for ~200 ms (and a full
    collection soon after for ~130 ms). Cyclic garbage alive at that moment is never collected
    (measured after such a catalog: 325 objects), so this is for rare, big work only. Bulk
    imports do not use it: at 1,000,000 feeds imported 60,000 at a time the API process kept
    1,130-1,214 MiB with it against 989 MiB without (peak 1,378-1,385 against 1,228 MiB)."""
    if _pause.blocks > 0:
        _pause.settle_reason = reason


async def let_go(*lists: list[Any], chunk: int = 2_000) -> None:
    """Empties each list a chunk at a time, the event loop free between chunks: a list that
    holds the last references to tens of thousands of objects frees them all at once when it
    goes, with the GIL held throughout (a 50,000-channel catalog's parsed items: ~100 ms)."""
    for items in lists:
        while items:
            del items[-chunk:]
            await asyncio.sleep(0)


def collect_everything() -> None:
    """Every object back in the collector's sight and one full collection: for the end of a
    process that will not run its exit handlers (a server killed by its own signal, see
    ``deploy.cli``), so that garbage caught in a reference cycle is finalized all the same.
    What ``settle`` froze is otherwise never looked at again: a process pool's queues, left
    in a cycle by their stopped threads, kept their named semaphores, and multiprocessing's
    resource tracker reported them leaked after the process ended. About 0.1 s for half a
    million objects."""
    gc.unfreeze()
    gc.collect()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: its C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


_trim = _malloc_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def return_free_memory() -> int:
    """Hands the heap's free pages back to the operating system; returns how many bytes the
    resident set shrank by (0 where glibc's ``malloc_trim`` is missing).

    Memory Python frees goes back to the C allocator, which keeps it for later: in the
    arenas of the threads that allocated it (the database driver's thread reads every row)
    and between live blocks, where it never shrinks the heap by itself. Measured loading
    1,000,000 feeds at start: 1,451 MiB resident at the end, 722 MiB after one
    ``malloc_trim(0)``, the same objects alive. Call it after work that freed much (a load,
    an import): it walks the heaps (milliseconds to tens of them), not something per request.
    """
    if _trim is None:
        return 0
    before = _resident_bytes()
    _trim(0)
    returned = max(0, before - _resident_bytes())
    RETURNED.inc(returned)
    return returned
