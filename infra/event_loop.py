"""The event loop FeedGrid's own processes run on: uvloop where it is installed.

``uvicorn registry_api.app:app`` (the API role as deployed) picks uvloop by itself; the
processes FeedGrid starts on its own loop (``feedgrid up``, its embedded stream worker's
thread, ``feedgrid worker``, the demo's clients) asked asyncio for its pure-Python selector
loop. On that loop
every socket read and write is a call that gives up the GIL and must take it back, and in the
all-in-one the stream worker's thread holds the GIL meanwhile for up to the interpreter's
switch interval; uvloop's transports read and write in libuv, without giving it up.
``FEEDGRID_EVENT_LOOP`` chooses: ``auto`` (uvloop if installed), ``uvloop`` or ``asyncio``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopChoice = Literal["auto", "uvloop", "asyncio"]


def loop_factory(choice: LoopChoice = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """How to make the chosen loop; ``uvloop`` when it is not installed is an error."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("FEEDGRID_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: LoopChoice = "auto") -> T:
    """``asyncio.run(main)`` on the chosen loop (this thread's only: no process-wide policy)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
