-- object: access_events
-- placement: sharded by cityHash64(feed_id)
-- One row per access CloudEvent (requests, decisions, grants, retrievals), enriched by the
-- agents with the feed's owner, kind, region and industry. The sink drops event_ids it has
-- already stored, and ReplacingMergeTree collapses any duplicate left on merge: exact raw
-- figures use FINAL or uniqExact(event_id). sink_block names the insert a row came in; its
-- deduplication token lets the sink re-send that insert to views a crash cut it off from.
CREATE TABLE IF NOT EXISTS {{access_events}} {{on_cluster}}
(
    event_id UUID,
    time DateTime64(3, 'UTC'),
    type LowCardinality(String),
    source LowCardinality(String),
    feed_id String,
    owner_department LowCardinality(String),
    requester_department LowCardinality(String),
    requester_user String,
    kind LowCardinality(String),
    region LowCardinality(String),
    industry LowCardinality(String),
    sharing_class LowCardinality(String),
    request_id String,
    grant_id String,
    token_id String,
    action LowCardinality(String),
    purpose String,
    decision LowCardinality(String),
    reason String,
    emergency Bool,
    protocol LowCardinality(String),
    media_server String,
    client_ip String,
    bytes UInt64,
    duration_seconds Float64,
    concurrent_viewers UInt32,
    requested_at Nullable(DateTime64(3, 'UTC')),
    decided_at Nullable(DateTime64(3, 'UTC')),
    grant_valid_from Nullable(DateTime64(3, 'UTC')),
    grant_valid_until Nullable(DateTime64(3, 'UTC')),
    kafka_partition UInt32,
    kafka_offset UInt64,
    sink_block UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX event_id_bloom event_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX time_minmax time TYPE minmax GRANULARITY 1,
    INDEX sink_block_bloom sink_block TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = {{engine: ReplacingMergeTree}}
PARTITION BY toYYYYMM(time)
ORDER BY (owner_department, requester_department, toStartOfHour(time), feed_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000, replicated_deduplication_window = 10000
