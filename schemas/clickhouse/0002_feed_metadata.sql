-- object: feed_metadata
-- placement: sharded by cityHash64(feed_id)
-- Every state of every feed's metadata; the highest version wins (FINAL, or argMax).
-- version is the registry's revision of the feed, which counts every change (status too).
CREATE TABLE IF NOT EXISTS {{feed_metadata}} {{on_cluster}}
(
    feed_id String,
    version UInt64,
    event_id UUID,
    event_type LowCardinality(String),
    time DateTime64(3, 'UTC'),
    name String,
    owner_department LowCardinality(String),
    kind LowCardinality(String),
    region LowCardinality(String),
    industry LowCardinality(String),
    sharing_class LowCardinality(String),
    status LowCardinality(String),
    device_code String,
    longitude Nullable(Float64),
    latitude Nullable(Float64),
    retired Bool,
    registered_at Nullable(DateTime64(3, 'UTC')),
    document String,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine: ReplacingMergeTree(version)}}
ORDER BY feed_id
