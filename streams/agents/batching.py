"""Consuming a stream in batches whose offsets are committed only after they were handled.

``stream.noack_take(n, within)`` hands over up to ``n`` events (or what arrived within
``within`` seconds) and, unlike ``take()``, acknowledges none of them. The handler turns them
into rows and awaits the sink, which returns only once ClickHouse holds the rows; only then are
the events acknowledged. Faust commits an offset once it and every earlier offset of the
partition are acknowledged, so the committed position never passes unstored data. With
``concurrency=1`` there is one handler per agent and acknowledgements come in offset order.

The handler must not raise for a bad message (those go to the dead-letter topic) nor for an
unavailable dependency (the sink and the publisher retry). Should it raise anyway (a bug),
the batch is handled again after a pause rather than acknowledged or dropped: handlers are
idempotent, so a retry stores nothing twice, and a stuck agent is loud in the logs. If the
task is cancelled mid-batch (shutdown, rebalance) nothing of the batch is acknowledged and it
is delivered again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.metrics import (
    BATCH_SECONDS,
    EVENTS_HANDLED,
    HANDLER_FAILURES,
    batch_finished,
    batch_started,
)
from streams.tuning import StreamTuning

log = logging.getLogger("feedgrid.streams.batching")

BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]


async def consume_in_batches(
    stream: Any, tuning: StreamTuning, name: str, handle: BatchHandler
) -> None:
    async for events in stream.noack_take(tuning.batch_size, tuning.flush_seconds):
        started = time.perf_counter()
        batch_started(name)
        await _handle_until_done(name, handle, events, tuning)
        for event in events:
            await stream.ack(event)
        batch_finished(name)
        EVENTS_HANDLED.labels(name).inc(len(events))
        BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)


async def _handle_until_done(
    name: str, handle: BatchHandler, events: Sequence[Any], tuning: StreamTuning
) -> None:
    delay = tuning.retry_initial_seconds
    while True:
        try:
            await handle(events)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            HANDLER_FAILURES.labels(name).inc()
            log.exception("%s: a batch of %d events failed; it is handled again", name, len(events))
            await asyncio.sleep(delay)
            delay = min(delay * 2, tuning.retry_max_seconds)
