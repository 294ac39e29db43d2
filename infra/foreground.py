"""Requests in flight, and the background loops of the same process giving way to them.

The all-in-one (``feedgrid up``) serves the API and runs its background loops in one Python
process, under one GIL: the liveness applier, the stream worker's batches, the worker's feed
catalog. When a city comes online (the demo gateways' first round: 56,000 feeds going from
``unknown`` to ``online``, about 0.5 ms of the process's CPU each, from the report to the
ClickHouse row) those loops took the GIL from the requests arriving meanwhile: on a slow
evening the demo's 2,000 access requests took 77-105 s to replay beside that round in
``./deploy/up``, against 52 s with the round held back; giving way, 56-70 s (the README's
"Background gives way to requests" has every series, some within the noise).

So a background loop, after each piece of its work, calls :func:`give_way` with how long the
piece took: while requests are in flight it pauses ``worked * (1 / share - 1)`` seconds (at
most :data:`MAX_PAUSE_SECONDS`), with none in flight it goes on at once. It never stops: under
unbroken load it still runs at ``share`` of its own pace, so its lag is bounded by how long
the load lasts, the way PostgreSQL's cost-based vacuum delay slows vacuum rather than stops
it. ``share`` is ``Settings.background_share`` (0.5), set for the process by the app's
lifespan (:func:`background_share`); 1.0 turns giving way off.

The count of requests in flight is kept by the API's request middleware (:func:`serving`),
on the event loop's thread; a worker's loop in another thread of the process only reads it.
A worker in its own process (the scale mode) sees none and never pauses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge

from infra.asked import AskedByApps

MAX_PAUSE_SECONDS = 0.25  # one pause, however long the piece of work was


class _Foreground:
    """The process's one record of requests in flight."""

    def __init__(self) -> None:
        self.in_flight = 0


_state = _Foreground()
_shares: AskedByApps[float] = AskedByApps()

IN_FLIGHT = Gauge(
    "feedgrid_foreground_requests_in_flight",
    "API requests being served (background loops of the process give way while any are)",
)
IN_FLIGHT.set_function(lambda: _state.in_flight)
PAUSED = Counter(
    "feedgrid_background_paused_seconds_total",
    "Time a background loop paused to give way to requests in flight",
    ["loop"],
)


@contextmanager
def serving() -> Iterator[None]:
    """Around a request: counted in flight while the block runs (on the event loop's thread)."""
    _state.in_flight += 1
    try:
        yield
    finally:
        _state.in_flight -= 1


def busy() -> bool:
    """Whether any request of the process is in flight."""
    return _state.in_flight > 0


@contextmanager
def background_share(share: float) -> Iterator[None]:
    """While the block runs, background loops keep ``share`` (0 < share <= 1) of their pace
    while requests are in flight."""
    if not 0 < share <= 1:
        raise ValueError(f"a background share is in (0, 1], not {share!r}")
    with _shares.asking(share):
        yield


def pause_for(worked: float) -> float:
    """How long a loop whose piece of work took ``worked`` seconds pauses now (0: none)."""
    share = _shares.current() or 1.0  # no app asked: background keeps its pace
    if _state.in_flight <= 0 or share >= 1 or worked <= 0:
        return 0.0
    return min(worked * (1 / share - 1), MAX_PAUSE_SECONDS)


async def give_way(loop: str, worked: float) -> float:
    """After a piece of background work that took ``worked`` seconds: pauses while requests
    are in flight (see the module's text), named ``loop`` in the metrics; returns the pause."""
    pause = pause_for(worked)
    if pause > 0:
        await asyncio.sleep(pause)
        PAUSED.labels(loop).inc(pause)
    return pause
