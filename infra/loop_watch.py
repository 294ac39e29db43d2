"""How late the event loop is, and what held it when it was blocked.

Everything a FeedGrid process serves runs on one asyncio loop: a piece of work that keeps the
loop for 80 ms delays every request arriving meanwhile by up to 80 ms, and shows up only as a
p99 nobody can explain. Two parts:

- a beat inside the loop (a task sleeping ``interval`` seconds at a time) measures how late
  each wake-up is: ``feedgrid_event_loop_lag_seconds``;
- a watchdog thread notices a beat that is overdue by ``report_after`` seconds, samples the
  loop thread's stack while the loop stays blocked, and when the loop is back logs one line
  (``event loop blocked``) with how long, the stack seen most often, and how much of the time
  the garbage collector had (its pauses are counted by ``infra.heap``): at INFO level, at
  WARNING from a second up. Reports are rate limited per place, so a recurring stall is one
  line per ``quiet_seconds`` with a count.

A loop is also held back by the process's other threads: they share the GIL with it (in
``feedgrid up`` the stream worker runs its own loop on a thread beside the API's), and a
stack showing the loop at a line that costs nothing (``select``, a ``write``) means another
thread had the GIL. So the samples also take the other threads that were busy (not waiting
on a lock, a queue or a selector), and the report names the one seen most often
(``beside``, with its thread's name and its samples).

The thread takes the GIL only every ``interval`` seconds, and samples only while a stall
lasts (``sys._current_frames``, no tracing): cheap enough to stay on in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client import Counter as MetricCounter
from prometheus_client import Histogram

from infra.heap import pause_seconds_total

log = logging.getLogger("feedgrid.loop")

LAG = Histogram(
    "feedgrid_event_loop_lag_seconds",
    "How late the event loop's beat woke up (work holding the loop delays every request)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0),
)
BLOCKED = MetricCounter(
    "feedgrid_event_loop_blocked_total",
    "Times the event loop was held past the report threshold",
)

STACK_DEPTH = 6  # innermost frames kept in a report
# Where a thread waits without the GIL: innermost (file, function) of an idle thread. The
# executors' and aiosqlite's threads wait in a C call (``SimpleQueue.get``) from their loop's
# own frame; running work, they are deeper in it (aiosqlite's calls into sqlite3 give the GIL
# up for the statement's step).
IDLE_PLACES = frozenset(
    {
        ("threading.py", "wait"),
        ("threading.py", "_wait_for_tstate_lock"),
        ("queue.py", "get"),
        ("selectors.py", "select"),
        ("concurrent/futures/thread.py", "_worker"),
        ("aiosqlite/core.py", "_connection_worker_thread"),
        ("infra/loop_watch.py", "_watch"),
    }
)
WARN_AFTER_SECONDS = 1.0  # a report is a warning from here on, information below
MAX_PLACES = 1_000  # places remembered for the rate limit


def frame_summary(frame: FrameType | None, depth: int = STACK_DEPTH) -> tuple[str, ...]:
    """The innermost ``depth`` frames, innermost first, as ``path:line function`` with the
    path from the package root (``registry_api/feeds/routes.py``, ``sqlalchemy/orm/...``)."""
    frames: list[str] = []
    while frame is not None and len(frames) < depth:
        code = frame.f_code
        frames.append(f"{_short_path(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return tuple(frames)


# Where code comes from, longest first: installed packages, the standard library, this project.
_ROOTS = sorted(
    {
        *(sysconfig.get_paths()[name] for name in ("purelib", "platlib", "stdlib")),
        str(Path(__file__).resolve().parents[1]),
    },
    key=len,
    reverse=True,
)


def _short_path(path: str) -> str:
    """``path`` from its root (``sqlalchemy/orm/...``, ``asyncio/...``, ``registry_api/...``)."""
    for root in _ROOTS:
        if path.startswith(root + "/"):
            return path[len(root) + 1 :]
    return path


@contextlib.asynccontextmanager
async def watching_loop(report_after_ms: float, role: str) -> AsyncIterator[None]:
    """The watch of the running loop, reporting from ``report_after_ms`` up; 0: no watch."""
    if report_after_ms <= 0:
        yield
        return
    async with LoopWatch(report_after=report_after_ms / 1000, role=role).running():
        yield


@dataclass
class Stall:
    """One blocked stretch, as the watchdog saw it."""

    began: float  # monotonic time of the last beat before it
    gc_before: float  # the collector's total pause seconds then
    stacks: Counter[tuple[str, ...]] = field(default_factory=Counter)
    # other threads busy meanwhile: (thread name, stack)
    beside: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)


def busy_threads(
    frames: dict[int, FrameType], leave_out: Collection[int]
) -> list[tuple[str, tuple[str, ...]]]:
    """(name, stack) of each thread in ``frames`` (``sys._current_frames()``) that is running
    Python or a call holding the GIL, not waiting (:data:`IDLE_PLACES`); ``leave_out``: idents
    not to look at."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    busy = []
    for ident, frame in frames.items():
        if ident in leave_out:
            continue
        place = frame_summary(frame)
        if not place:
            continue
        where, _, function = place[0].partition(" ")
        if (where.rsplit(":", 1)[0], function) in IDLE_PLACES:
            continue
        busy.append((names.get(ident, str(ident)), place))
    return busy


class LoopWatch:
    """Start it from inside the loop it watches (``async with watch.running():``)."""

    def __init__(
        self,
        *,
        interval: float = 0.02,
        report_after: float = 0.1,
        quiet_seconds: float = 30.0,
        role: str = "api",
    ) -> None:
        if interval <= 0 or report_after <= interval:
            raise ValueError("need 0 < interval < report_after")
        self.interval = interval
        self.report_after = report_after
        self.quiet_seconds = quiet_seconds
        self.role = role
        self._last_beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stall: Stall | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reported: dict[tuple[str, ...], tuple[float, int]] = {}  # place: (when, unsaid)
        self.reports: list[dict[str, object]] = []  # the latest 20 reports made

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LoopWatch]:
        self._loop_thread = threading.get_ident()
        self._last_beat = time.monotonic()
        self._stop.clear()
        beat = asyncio.create_task(self._beat(), name="loop-watch beat")
        thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            thread.join(self.interval * 5)  # it wakes every interval and sees the stop

    async def _beat(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            LAG.observe(max(0.0, now - asked - self.interval))
            with self._lock:
                stall, self._stall = self._stall, None
                self._last_beat = now
            if stall is not None:
                self._report(stall, now)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                overdue = time.monotonic() - self._last_beat - self.interval
                if overdue < self.report_after:
                    continue
                if self._stall is None:
                    self._stall = Stall(self._last_beat, pause_seconds_total())
                stall = self._stall
            frames = sys._current_frames()
            place = frame_summary(frames.get(self._loop_thread))
            beside = busy_threads(frames, (self._loop_thread, threading.get_ident()))
            with self._lock:  # the beat may have taken the stall meanwhile: then it is over
                if self._stall is stall:
                    stall.stacks[place] += 1
                    stall.beside.update(beside)

    def _report(self, stall: Stall, now: float) -> None:
        blocked = now - stall.began - self.interval
        if blocked < self.report_after:
            return
        BLOCKED.inc()
        place, samples = stall.stacks.most_common(1)[0] if stall.stacks else ((), 0)
        said, unsaid = self._reported.get(place, (float("-inf"), 0))
        if now - said < self.quiet_seconds:
            self._reported[place] = (said, unsaid + 1)
            return
        if len(self._reported) >= MAX_PLACES:  # places quiet for long are forgotten
            self._reported = {
                known: entry
                for known, entry in self._reported.items()
                if now - entry[0] < self.quiet_seconds
            }
        self._reported[place] = (now, 0)
        report: dict[str, object] = {
            "role": self.role,
            "blocked_ms": round(blocked * 1000, 1),
            "gc_ms": round((pause_seconds_total() - stall.gc_before) * 1000, 1),
            "samples": sum(stall.stacks.values()),
            "same_place_samples": samples,
            "stack": " <- ".join(place) if place else "(not sampled)",
            "since_last_report": unsaid,
        }
        if stall.beside:
            (thread, other), seen = stall.beside.most_common(1)[0]
            report["beside"] = f"{thread}: " + " <- ".join(other)
            report["beside_samples"] = seen
        self.reports = [*self.reports[-19:], report]
        # A second or more is a fault; shorter holds are what a p99 is made of: worth a line,
        # not an alarm (a demo city loading in the same process makes a few).
        level = logging.WARNING if blocked >= WARN_AFTER_SECONDS else logging.INFO
        log.log(level, "event loop blocked", extra=report)
