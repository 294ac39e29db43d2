"""Everything one worker process shares: the Faust app and its agents, the batch path, state.

Built once per process from the settings (``build_stream_context``). Two paths read Kafka:

* the **batch path** (``streams.pipeline``): access events, heartbeats and feed metadata
  (every version into ClickHouse), nearly every event, read in batches below Faust and stored
  as blocks;
* a **Faust agent** (``streams.agents``): the per-requester rules over the
  ``requester-activity`` topic the batch path feeds; Faust runs the app, its topics, the agent
  and its lifecycle.

Both publish through one :class:`streams.publisher.Publisher` and store through one
:class:`streams.sink.ClickHouseSink`. ``streams/README.md`` says which path carries what, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust

from infra.clickhouse import is_embedded
from infra.kafka_batches import COMPRESSION
from schemas.settings import Settings
from schemas.topics import (
    ACCESS_EVENTS,
    ALERTS,
    DEAD_LETTER,
    FEED_METADATA,
    FEED_STATUS,
    HEARTBEATS,
    REQUESTER_ACTIVITY,
    topic_name,
)
from streams.access import AccessEventsHandler
from streams.catalog import FeedCatalog
from streams.feed_metadata import FeedMetadataHandler
from streams.grants import GrantBook
from streams.live import LiveSessions
from streams.liveness import LivenessHandler
from streams.monitor import LeanMonitor
from streams.pipeline import BatchPipeline
from streams.publisher import Publisher
from streams.sink import ClickHouseSink
from streams.tuning import StreamTuning, load_tuning


@dataclass
class StreamTopics:
    feed_metadata: str
    requester_activity: faust.TopicT
    access_events: str
    heartbeats: str
    feed_status: str
    alerts: str
    dead_letter: str


@dataclass
class StreamContext:
    settings: Settings
    tuning: StreamTuning
    app: faust.App
    topics: StreamTopics
    sink: ClickHouseSink
    publisher: Publisher
    catalog: FeedCatalog
    grants: GrantBook
    live: LiveSessions
    access: AccessEventsHandler
    liveness: LivenessHandler
    pipeline: BatchPipeline
    agents: dict[str, Any] = field(default_factory=dict)


def _faust_app(settings: Settings, tuning: StreamTuning) -> faust.App:
    (settings.var_dir / "faust").mkdir(parents=True, exist_ok=True)
    return faust.App(
        f"{settings.topic_prefix}worker",
        monitor=LeanMonitor(),
        broker=[f"kafka://{entry}" for entry in settings.kafka_bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        # Faust keeps its data under the var dir, not the working dir.
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
        producer_compression_type=COMPRESSION,
    )


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def build_stream_context(settings: Settings, tuning: StreamTuning | None = None) -> StreamContext:
    from streams.agents import register_agents

    tuning = tuning or load_tuning()
    app = _faust_app(settings, tuning)
    prefix = settings.topic_prefix
    topics = StreamTopics(
        feed_metadata=topic_name(prefix, FEED_METADATA),
        requester_activity=_raw_topic(app, topic_name(prefix, REQUESTER_ACTIVITY)),
        access_events=topic_name(prefix, ACCESS_EVENTS),
        heartbeats=topic_name(prefix, HEARTBEATS),
        feed_status=topic_name(prefix, FEED_STATUS),
        alerts=topic_name(prefix, ALERTS),
        dead_letter=topic_name(prefix, DEAD_LETTER),
    )
    sink = ClickHouseSink(
        settings.clickhouse_url,
        tuning,
        resend_replayed_blocks=not is_embedded(settings.clickhouse_url),
    )
    publisher = Publisher(settings.kafka_bootstrap, tuning.retry_max_seconds)
    catalog = FeedCatalog(settings.kafka_bootstrap, topics.feed_metadata)
    grants = GrantBook()
    live = LiveSessions(tuning.session_expiry_seconds)
    access = AccessEventsHandler(
        catalog=catalog,
        grants=grants,
        live=live,
        requester_topic=topic_name(prefix, REQUESTER_ACTIVITY),
        dead_letter_topic=topics.dead_letter,
    )
    liveness = LivenessHandler(
        catalog=catalog,
        grants=grants,
        silence_seconds=tuning.heartbeat_silence_seconds,
        seen_interval_seconds=tuning.liveness_seen_seconds,
        status_topic=topics.feed_status,
        dead_letter_topic=topics.dead_letter,
    )
    pipeline = BatchPipeline(
        bootstrap=settings.kafka_bootstrap,
        group_id=f"{prefix}worker-batch",
        handlers={
            topics.access_events: access,
            topics.heartbeats: liveness,
            topics.feed_metadata: FeedMetadataHandler(dead_letter_topic=topics.dead_letter),
        },
        sink=sink,
        publisher=publisher,
        tuning=tuning,
        clickhouse_url=settings.clickhouse_url,
        alerts_topic=topics.alerts,
        events_topic=topics.access_events,
        scan=liveness.scan,
        read_up_to=lambda: liveness.newest_read,
    )
    context = StreamContext(
        settings=settings,
        tuning=tuning,
        app=app,
        topics=topics,
        sink=sink,
        publisher=publisher,
        catalog=catalog,
        grants=grants,
        live=live,
        access=access,
        liveness=liveness,
        pipeline=pipeline,
    )
    register_agents(context)
    pipeline.faust_agents = sorted(context.agents)
    return context
