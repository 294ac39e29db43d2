"""The event loop's watch (infra/loop_watch.py): lateness measured, a blocked loop reported
once per place with the stack that held it, nothing reported when the loop keeps turning."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import sysconfig
import threading
import time

import pytest
from prometheus_client import REGISTRY

from infra.heap import pause_seconds_total, tune_collector
from infra.loop_watch import (
    LoopWatch,
    _short_path,
    busy_threads,
    frame_summary,
    watching_loop,
)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def hold_the_loop(seconds: float) -> None:
    """Blocks the calling thread (the loop's) without giving the loop a turn."""
    time.sleep(seconds)


async def logged_hold(
    watch: LoopWatch, seconds: float, caplog: pytest.LogCaptureFixture
) -> list[tuple[str, str]]:
    """Holds the watched loop once, between two turns; the watch's log lines (level, text)."""
    with caplog.at_level(logging.INFO, logger="feedgrid.loop"):
        async with watch.running():
            await asyncio.sleep(0.05)
            hold_the_loop(seconds)
            await asyncio.sleep(0.05)
    return [(record.levelname, record.getMessage()) for record in caplog.records]


async def test_a_blocked_loop_is_reported_with_what_held_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocked_before = _sample("feedgrid_event_loop_blocked_total")
    beats_before = _sample("feedgrid_event_loop_lag_seconds_count")
    watch = LoopWatch(interval=0.01, report_after=0.08)
    logged = await logged_hold(watch, 0.3, caplog)
    [report] = watch.reports
    assert 250 <= float(str(report["blocked_ms"])) < 1000
    assert "hold_the_loop" in str(report["stack"])
    assert "tests/unit/test_loop_watch.py:" in str(report["stack"])  # from the project's root
    assert int(str(report["samples"])) >= 5  # sampled while it lasted, every 10 ms
    assert logged == [("INFO", "event loop blocked")]  # under a second: not an alarm
    assert _sample("feedgrid_event_loop_blocked_total") == blocked_before + 1
    assert _sample("feedgrid_event_loop_lag_seconds_count") > beats_before + 3


def spin_beside(stop: threading.Event) -> None:
    """A thread busy running Python until told to stop."""
    while not stop.is_set():
        sum(range(1000))


async def test_a_stall_names_the_thread_busy_beside_it_and_not_the_idle_ones() -> None:
    stop, never = threading.Event(), threading.Event()
    busy = threading.Thread(target=spin_beside, args=(stop,), name="busy-beside")
    idle = threading.Thread(target=never.wait, args=(5,), name="idle-beside")
    busy.start()
    idle.start()
    try:
        watch = LoopWatch(interval=0.01, report_after=0.05)
        async with watch.running():
            await asyncio.sleep(0.05)
            hold_the_loop(0.3)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        never.set()
        busy.join()
        idle.join()
    [report] = watch.reports
    assert str(report["beside"]).startswith("busy-beside: tests/unit/test_loop_watch.py:")
    assert "spin_beside" in str(report["beside"])
    assert int(str(report["beside_samples"])) >= 3


async def test_threads_waiting_are_not_busy() -> None:
    never = threading.Event()
    idle = threading.Thread(target=never.wait, args=(5,), name="idle-beside")
    idle.start()
    # an executor's thread between work items waits in SimpleQueue.get, a C call
    await asyncio.to_thread(time.sleep, 0)
    try:
        time.sleep(0.02)
        busy = busy_threads(sys._current_frames(), {threading.get_ident()})
    finally:
        never.set()
        idle.join()
    names = [name for name, _ in busy]
    assert not [name for name in names if name == "idle-beside" or name.startswith("asyncio_")]


async def test_a_recurring_stall_is_one_line_per_quiet_period() -> None:
    blocked_before = _sample("feedgrid_event_loop_blocked_total")
    watch = LoopWatch(interval=0.01, report_after=0.05, quiet_seconds=60)
    async with watch.running():
        for _ in range(3):
            await asyncio.sleep(0.03)
            hold_the_loop(0.15)
        await asyncio.sleep(0.03)
    assert len(watch.reports) == 1  # the same place: counted, said once
    assert _sample("feedgrid_event_loop_blocked_total") == blocked_before + 3


async def test_a_turning_loop_reports_nothing() -> None:
    watch = LoopWatch(interval=0.01, report_after=0.1)
    async with watch.running():
        for _ in range(20):
            hold_the_loop(0.01)  # short holds, each below the threshold
            await asyncio.sleep(0.005)
    assert watch.reports == []


async def test_a_collection_inside_a_stall_is_told_apart() -> None:
    tune_collector()
    watch = LoopWatch(interval=0.01, report_after=0.05)
    async with watch.running():
        await asyncio.sleep(0.03)
        before = pause_seconds_total()
        started = time.monotonic()
        while time.monotonic() - started < 0.1:
            gc.collect()
        collected = pause_seconds_total() - before
        await asyncio.sleep(0.03)
    [report] = watch.reports
    assert collected > 0.05
    assert float(str(report["gc_ms"])) >= collected * 1000 * 0.9


def test_frame_summary_is_innermost_first_and_short() -> None:
    frames = frame_summary(sys._getframe(), depth=2)
    assert len(frames) == 2
    assert "test_loop_watch.py:" in frames[0]
    assert frames[0].endswith("test_frame_summary_is_innermost_first_and_short")


@pytest.mark.parametrize(("interval", "report_after"), [(0.0, 0.1), (0.1, 0.1), (0.2, 0.1)])
def test_thresholds_must_leave_room_for_a_beat(interval: float, report_after: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        LoopWatch(interval=interval, report_after=report_after)


async def test_a_loop_held_for_a_second_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    logged = await logged_hold(LoopWatch(interval=0.02, report_after=0.1), 1.05, caplog)
    assert logged == [("WARNING", "event loop blocked")]


async def test_the_watch_can_be_turned_off() -> None:
    beats_before = _sample("feedgrid_event_loop_lag_seconds_count")
    async with watching_loop(0, role="api"):
        await asyncio.sleep(0.1)
    assert _sample("feedgrid_event_loop_lag_seconds_count") == beats_before
    async with watching_loop(50, role="api"):
        await asyncio.sleep(0.1)
    assert _sample("feedgrid_event_loop_lag_seconds_count") > beats_before


@pytest.mark.parametrize(("value", "accepted"), [(0, True), (10, False), (49, False), (50, True)])
def test_the_threshold_is_off_or_above_the_beat(value: float, accepted: bool) -> None:
    from pydantic import ValidationError

    from schemas.settings import Settings

    if accepted:
        assert Settings(loop_blocked_report_ms=value).loop_blocked_report_ms == value
    else:
        with pytest.raises(ValidationError, match="at least 50"):
            Settings(loop_blocked_report_ms=value)


def test_paths_are_shown_from_their_root() -> None:
    assert frame_summary(sys._getframe())[0].startswith("tests/unit/test_loop_watch.py:")
    stdlib = sysconfig.get_paths()["stdlib"]
    packages = sysconfig.get_paths()["purelib"]
    assert _short_path(f"{stdlib}/asyncio/events.py") == "asyncio/events.py"
    assert _short_path(f"{packages}/sqlalchemy/orm/session.py") == "sqlalchemy/orm/session.py"
    assert _short_path("/elsewhere/tool.py") == "/elsewhere/tool.py"
    assert frame_summary(None) == ()
