"""Everything the agents share: the Faust app, its topics and tables, the sink, the publisher.

Built once per process from the settings (``build_stream_context``); the agents register on it.
Tables use the producer's partitioner on the raw feed id, so a table key lives on the same
partition number as the feed's messages on every topic (all keyed by feed id): the worker that
owns a feed's events also owns its table entries, in embedded and in scale mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust

from infra.clickhouse import is_embedded
from schemas.settings import Settings
from schemas.topics import (
    ACCESS_EVENTS,
    ALERTS,
    DEAD_LETTER,
    FEED_METADATA,
    HEARTBEATS,
    REQUESTER_ACTIVITY,
    topic_name,
)
from streams.live import LiveSessions
from streams.monitor import LeanMonitor
from streams.publisher import Publisher
from streams.registry_status import RegistryStatusWriter
from streams.sink import ClickHouseSink
from streams.tuning import StreamTuning, load_tuning


@dataclass
class StreamTopics:
    feed_metadata: faust.TopicT
    access_events: faust.TopicT
    heartbeats: faust.TopicT
    requester_activity: faust.TopicT
    alerts: str
    dead_letter: str


class FeedTable:
    """A Faust table keyed by feed id, stored under the raw UTF-8 id (the topics' key bytes).

    Reads go to the table's store directly: the table's own ``get`` also feeds Faust's
    per-key statistics sensor, which costs more than the rest of an event's enrichment.
    Writes go through the table, so they reach its changelog.
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, feed_id: str) -> dict[str, Any] | None:
        store = self.table.data
        # The in-memory store keeps a plain dict; other stores answer get() themselves.
        value = getattr(store, "data", store).get(feed_id.encode())
        return value if isinstance(value, dict) else None

    def __setitem__(self, feed_id: str, value: dict[str, Any]) -> None:
        self.table[feed_id.encode()] = value

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (key.decode() if isinstance(key, bytes) else str(key), value)
            for key, value in list(self.table.items())
            if isinstance(value, dict)
        ]


@dataclass
class StreamTables:
    feeds: FeedTable  # feed_id -> FeedSnapshot as JSON
    grants: FeedTable  # feed_id -> {grant_id: GrantState as JSON}
    liveness: FeedTable  # feed_id -> {"status", "last_seen", "changed_at"}


@dataclass
class StreamContext:
    settings: Settings
    tuning: StreamTuning
    app: faust.App
    topics: StreamTopics
    tables: StreamTables
    sink: ClickHouseSink
    publisher: Publisher
    registry: RegistryStatusWriter
    live: LiveSessions
    agents: dict[str, Any] = field(default_factory=dict)

    def feed(self, feed_id: str) -> dict[str, Any] | None:
        return self.tables.feeds.get(feed_id)


def _faust_app(settings: Settings, tuning: StreamTuning) -> faust.App:
    (settings.var_dir / "faust").mkdir(parents=True, exist_ok=True)
    return faust.App(
        f"{settings.topic_prefix}worker",
        monitor=LeanMonitor(),
        broker=[f"kafka://{entry}" for entry in settings.kafka_bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        # Faust keeps table state under its data dir: in the var dir, not the working dir.
        datadir=str(settings.var_dir / "faust" / "{conf.name}-data"),
        topic_replication_factor=settings.topic_replication,
        topic_partitions=settings.topic_partitions,
        table_standby_replicas=0,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        stream_buffer_maxsize=tuning.stream_buffer,
        broker_max_poll_records=tuning.max_poll_records,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=tuning.session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, tuning.session_timeout_seconds / 10),
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,
        producer_compression_type="lz4",
    )


def _raw_topic(app: faust.App, name: str, **options: Any) -> faust.TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        **options,
    )


def _table(app: faust.App, name: str, settings: Settings, help_text: str) -> FeedTable:
    table = app.Table(
        name,
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        use_partitioner=True,
        help=help_text,
    )
    return FeedTable(table)


def build_stream_context(
    settings: Settings,
    tuning: StreamTuning | None = None,
    *,
    registry: RegistryStatusWriter | None = None,
) -> StreamContext:
    from streams.agents import register_agents

    tuning = tuning or load_tuning()
    app = _faust_app(settings, tuning)
    prefix = settings.topic_prefix
    topics = StreamTopics(
        feed_metadata=_raw_topic(app, topic_name(prefix, FEED_METADATA)),
        access_events=_raw_topic(app, topic_name(prefix, ACCESS_EVENTS)),
        heartbeats=_raw_topic(app, topic_name(prefix, HEARTBEATS)),
        requester_activity=_raw_topic(
            app,
            topic_name(prefix, REQUESTER_ACTIVITY),
            internal=True,
            partitions=settings.topic_partitions,
            retention=86_400.0,
        ),
        alerts=topic_name(prefix, ALERTS),
        dead_letter=topic_name(prefix, DEAD_LETTER),
    )
    tables = StreamTables(
        feeds=_table(app, "feeds", settings, "Current state of each feed, for enrichment"),
        grants=_table(app, "grants", settings, "Grants known per feed, for the alert rules"),
        liveness=_table(app, "liveness", settings, "Online/offline state of each feed"),
    )
    context = StreamContext(
        settings=settings,
        tuning=tuning,
        app=app,
        topics=topics,
        tables=tables,
        sink=ClickHouseSink(
            settings.clickhouse_url,
            tuning,
            resend_replayed_blocks=not is_embedded(settings.clickhouse_url),
        ),
        publisher=Publisher(app, tuning.retry_max_seconds),
        registry=registry or RegistryStatusWriter(settings.database_url),
        live=LiveSessions(tuning.session_expiry_seconds),
    )
    register_agents(context)
    return context
