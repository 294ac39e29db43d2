"""The worker: built from settings, run on its own thread in ``feedgrid up`` or as ``feedgrid
worker``.

Both ways run :func:`run_stream_worker`: make sure the topics and the ClickHouse tables exist
(waiting for Kafka and ClickHouse if they are not there yet), start the publisher and the feed
catalog, start the Faust agents and the batch path, run until told to stop.

Embedded (``feedgrid up``), the worker runs on a thread of its own with its own event loop: the
API and the worker then never wait on each other's callbacks (a burst of hook calls cannot
starve the sink, a 50,000-event batch cannot delay a request), and the process still holds
the one chdb engine both use. Standalone, ``streams.worker`` runs it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faust.contrib.asgi import faust_app_running

from infra.clickhouse_migrations import apply_migrations
from infra.event_loop import run as run_loop
from infra.health import unregister_check
from infra.heap import settle
from infra.kafka_admin import ensure_topics
from schemas.settings import Settings
from streams.context import StreamContext, build_stream_context
from streams.tuning import StreamTuning, load_tuning

log = logging.getLogger("feedgrid.streams")

EMBEDDED_START_WAIT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


async def prepare_dependencies(settings: Settings, waiting: threading.Event | None = None) -> None:
    """Topics and ClickHouse tables, created if missing; retries until both answer.

    ``waiting`` is set at the first failure, so a caller can stop waiting for the start.
    """
    delay = 0.5
    while True:
        try:
            await ensure_topics(settings)
            await asyncio.to_thread(apply_migrations, settings.clickhouse_url)
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("stream worker waiting for kafka/clickhouse: %s", error)
            if waiting is not None:
                waiting.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)


async def run_stream_worker(
    context: StreamContext,
    stop: asyncio.Event,
    started: threading.Event | asyncio.Event | None = None,
    waiting: threading.Event | None = None,
) -> None:
    await prepare_dependencies(context.settings, waiting)
    await context.publisher.start()
    await context.catalog.start()
    try:
        async with faust_app_running(context.app, stop_timeout=STOP_TIMEOUT_SECONDS):
            await context.catalog.wait_caught_up()
            pipeline = asyncio.create_task(context.pipeline.run(stop), name="stream-batch-path")
            log.info(
                "stream worker running",
                extra={
                    "agents": sorted(context.agents),
                    "batch_path": sorted(context.pipeline.handlers),
                    "topic_prefix": context.settings.topic_prefix,
                    "catalog_feeds": len(context.catalog),
                },
            )
            # The feed catalog just read lives as long as the worker (infra/heap).
            settle("stream worker caught up")
            if started is not None:
                started.set()
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({pipeline, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            stop.set()
            # Nothing is lost if it does not finish: unstored batches were never committed.
            try:
                await asyncio.wait_for(pipeline, STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("the batch path did not stop within %ss", STOP_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning(
            "the agents did not stop within %ss; unfinished batches come again",
            STOP_TIMEOUT_SECONDS,
        )
    finally:
        unregister_check("stream-worker")
        await context.catalog.stop()
        await context.publisher.stop()


class EmbeddedWorker:
    """The worker on a thread of its own, with its own event loop (``feedgrid up``)."""

    def __init__(self, settings: Settings, tuning: StreamTuning | None = None) -> None:
        self.settings = settings
        self.tuning = tuning or load_tuning()
        self.started = threading.Event()
        self.waiting = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.context: StreamContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="stream-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            run_loop(self._main(), self.settings.event_loop)
        except BaseException as error:  # reported to the API's lifespan, then logged
            self.error = error
            log.exception("the embedded stream worker stopped with an error")
        finally:
            self.finished.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.context = build_stream_context(self.settings, self.tuning)
        await run_stream_worker(self.context, self._stop, self.started, self.waiting)

    def request_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


@asynccontextmanager
async def embedded_worker(
    settings: Settings, tuning: StreamTuning | None = None
) -> AsyncIterator[EmbeddedWorker]:
    """Runs the agents, the batch path and the sink beside the API, in this process."""
    worker = EmbeddedWorker(settings, tuning)
    worker.start()
    # The API waits for the worker when Kafka answers (the usual start), never for Kafka.
    deadline = asyncio.get_running_loop().time() + EMBEDDED_START_WAIT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        if worker.started.is_set() or worker.waiting.is_set() or worker.finished.is_set():
            break
        await asyncio.sleep(0.05)
    if worker.finished.is_set() and worker.error is not None:
        raise RuntimeError("the embedded stream worker failed to start") from worker.error
    if not worker.started.is_set():
        log.warning("stream worker not started yet; it keeps trying in the background")
    try:
        yield worker
    finally:
        worker.request_stop()
        stopped = await asyncio.to_thread(worker.join, STOP_TIMEOUT_SECONDS + 10)
        if not stopped:
            log.warning("the embedded stream worker did not stop in time; leaving it")
