"""The Faust application: built from settings, run embedded in the API or as `feedgrid worker`.

Both ways run :func:`run_stream_worker`: make sure the topics and the ClickHouse tables exist
(waiting for Kafka and ClickHouse if they are not there yet), start the agents, run until told
to stop. Embedded, it runs as a background task of the API's lifespan, so the API serves even
while Kafka is still down; standalone, ``streams.worker`` runs it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faust
from faust.contrib.asgi import faust_app_running

from infra.clickhouse_migrations import apply_migrations
from infra.kafka_admin import ensure_topics
from schemas.settings import Settings
from streams.context import StreamContext, build_stream_context
from streams.registry_status import RegistryStatusWriter
from streams.tuning import StreamTuning, load_tuning

log = logging.getLogger("feedgrid.streams")

EMBEDDED_START_WAIT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


def build_faust_app(settings: Settings) -> faust.App:
    """The Faust app with every agent registered (for tools that want the app alone)."""
    return build_stream_context(settings).app


async def prepare_dependencies(settings: Settings, waiting: asyncio.Event | None = None) -> None:
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
    started: asyncio.Event | None = None,
    waiting: asyncio.Event | None = None,
) -> None:
    await prepare_dependencies(context.settings, waiting)
    # Table writes queue their changelog messages in the producer's buffer. Faust's default
    # bound (100) makes every batch that touches more keys stop, flush and log a warning.
    context.app.producer.buffer.max_messages = context.tuning.stream_buffer
    try:
        async with faust_app_running(context.app, stop_timeout=STOP_TIMEOUT_SECONDS):
            log.info(
                "faust agents running in-process",
                extra={
                    "agents": sorted(context.agents),
                    "topic_prefix": context.settings.topic_prefix,
                },
            )
            await _track_topics(context)
            if started is not None:
                started.set()
            await stop.wait()
    except TimeoutError:
        # Nothing is lost: events of an unfinished batch were never acknowledged.
        log.warning(
            "the agents did not stop within %ss; unfinished batches come again",
            STOP_TIMEOUT_SECONDS,
        )
    finally:
        await context.registry.close()


async def _track_topics(context: StreamContext) -> None:
    """Table writes pick their changelog partition synchronously from the producer's metadata.
    Once any topic is tracked, aiokafka refreshes metadata for tracked topics only, so an
    untracked changelog can drop out of it and every write to that table fails until a send
    asks for it. Track every topic this worker writes to, in one refresh."""
    client = context.app.producer._ensure_producer().client  # noqa: SLF001 (no public way)
    tables = (context.tables.feeds, context.tables.grants, context.tables.liveness)
    names = {table.table.changelog_topic.get_topic_name() for table in tables}
    names |= {context.topics.requester_activity.get_topic_name()}
    names |= {context.topics.alerts, context.topics.dead_letter}
    for name in sorted(names):
        client.add_topic(name)
    await client.force_metadata_update()


@asynccontextmanager
async def embedded_worker(
    settings: Settings, runtime: object, tuning: StreamTuning | None = None
) -> AsyncIterator[StreamContext]:
    """Runs the agents and the sink on the API's event loop (one process, the embedded default)."""
    sessions = getattr(runtime, "sessions", None)
    feed_index = getattr(runtime, "feed_index", None)
    context = build_stream_context(
        settings,
        tuning or load_tuning(),
        registry=RegistryStatusWriter(
            settings.database_url,
            sessions,
            on_status=getattr(feed_index, "apply_event", None),
        ),
    )
    stop, started, waiting = asyncio.Event(), asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_stream_worker(context, stop, started, waiting), name="stream-worker"
    )
    # The API waits for the agents when Kafka answers (the usual start), never for Kafka.
    watchers = {asyncio.create_task(started.wait()), asyncio.create_task(waiting.wait())}
    await asyncio.wait(
        {task, *watchers}, timeout=EMBEDDED_START_WAIT_SECONDS, return_when="FIRST_COMPLETED"
    )
    for watcher in watchers:
        watcher.cancel()
    if task.done() and task.exception() is not None:
        raise RuntimeError("the embedded stream worker failed to start") from task.exception()
    if not started.is_set():
        log.warning("stream worker not started yet; it keeps trying in the background")
    try:
        yield context
    finally:
        stop.set()
        if not started.is_set():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS + 5)
