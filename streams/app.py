"""The Faust application: built from settings, run embedded in the API or as `feedgrid worker`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import faust
from faust.contrib.asgi import faust_app_running
from prometheus_client import Counter

from schemas.settings import Settings
from schemas.topics import FEED_METADATA, topic_name

log = logging.getLogger("feedgrid.streams")

EVENTS_SEEN = Counter("feedgrid_stream_events_total", "Events consumed by the agents", ["topic"])


def build_faust_app(settings: Settings) -> faust.App:
    app = faust.App(
        f"{settings.topic_prefix}worker",
        broker=[f"kafka://{entry}" for entry in settings.kafka_bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        topic_replication_factor=settings.topic_replication,
        topic_partitions=settings.topic_partitions,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
    )
    feed_metadata = app.topic(
        topic_name(settings.topic_prefix, FEED_METADATA), value_type=bytes, value_serializer="raw"
    )

    @app.agent(feed_metadata, concurrency=1)
    async def count_feed_metadata(stream: Any) -> None:
        async for _payload in stream:
            EVENTS_SEEN.labels(FEED_METADATA).inc()

    return app


@asynccontextmanager
async def embedded_worker(settings: Settings, runtime: object) -> AsyncIterator[faust.App]:
    """Runs the Faust agents on the API's event loop (one process, the embedded default)."""
    app = build_faust_app(settings)
    async with faust_app_running(app, stop_timeout=15.0):
        log.info("faust agents running in-process")
        yield app
