"""How soon a thread waiting for the GIL gets it: sooner while a SQLite writer holds its turn.

A FeedGrid API process runs Python in more than one thread: the event loop, and SQLite's
connection threads, where every statement's step gives up the GIL and takes it back. A thread
coming back from such a call waits for the GIL until the thread holding it lets go, at the
latest after the interpreter's switch interval: 5 ms by default. The writers of a SQLite
registry take turns (``registry_api.db.WriteTurn``), and a turn whose thread waits up to 5 ms
per statement for an event loop busy preparing the next request holds every other writer
back that long.

So while a writer holds the turn the interval is short (``Settings.gil_switch_interval_ms``,
0.5 ms), and between turns it is the interpreter's own again. Measured side by side on
2026-12-06 (``bench_access``, the same code but this): access requests for 100 feeds from 8
connections 49.5 a second against 44.4 (and 49.8 / 52.8 against 34.6 / 37.6 with 0.5 ms for
the whole process), media-server hook decisions 2,925 against 2,869 a second, their p99 at
2,000/s 7.0 against 9.1 ms. For the whole process the short interval cost the hooks: 2,527 /
2,495 decisions a second against 2,778 / 2,865, their p99 at 2,000/s 45 / 10 ms against
13 / 4 (more hand-overs to threads that want the GIL for a moment), so it is only the turn's.
In ``feedgrid up``, where the stream worker's thread shares the GIL with the API's loop, 1 ms
for the whole process did not help either (2026-12-07, ``bench_load --only hook_check``, one
run each): hook checks 729 a second closed loop against 1,009, and a p99 of 24.7 ms at 91 a
second against 23.3 ms at 126 a second with the interpreter's 5 ms.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from infra.asked import AskedByApps


class _TurnInterval:
    """The process's one record of who holds the short interval."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.holders = 0  # writers holding a turn with the short interval
        self.between = 0.0  # the interval to go back to once none does


_state = _TurnInterval()
_asked: AskedByApps[float] = AskedByApps()  # the short interval, in seconds


@contextmanager
def short_while_writing(milliseconds: float) -> Iterator[None]:
    """While the block runs, a writer holding its turn (:func:`turn_taken`) has the GIL back
    within ``milliseconds`` of asking for it."""
    with _asked.asking(milliseconds / 1000):
        yield


def turn_taken() -> bool:
    """A writer took its turn (on the connection's thread): the short interval, if one is set
    (:func:`short_while_writing`). Returns whether it was, for :func:`turn_given`."""
    interval = _asked.current()
    if interval is None:
        return False
    with _state.guard:
        _state.holders += 1
        if _state.holders == 1:
            _state.between = sys.getswitchinterval()
            sys.setswitchinterval(interval)
        return True


def turn_given(shortened: bool) -> None:
    """The writer gave its turn back: the interval between turns again once no writer holds
    one."""
    if not shortened:
        return
    with _state.guard:
        _state.holders -= 1
        if _state.holders == 0:
            sys.setswitchinterval(_state.between)
