"""The loop FeedGrid's own processes run on (infra/event_loop.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from infra.event_loop import loop_factory, run
from schemas.settings import Settings


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_auto_runs_on_uvloop_where_it_is_installed() -> None:
    assert isinstance(run(_running_loop()), uvloop.Loop)
    assert Settings().event_loop == "auto"


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    loop = run(_running_loop(), "asyncio")
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_the_choice_is_the_threads_own_not_the_processes_policy() -> None:
    """A loop run here leaves asyncio.run elsewhere (a library's, a test's) on its own loop."""
    run(_running_loop())
    assert not isinstance(asyncio.run(_running_loop()), uvloop.Loop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(RuntimeError, match="not installed"):
        loop_factory("uvloop")


def test_a_loop_that_is_not_known_is_refused_in_the_settings() -> None:
    with pytest.raises(ValueError, match="event_loop"):
        Settings(event_loop="tokio")  # type: ignore[arg-type]
