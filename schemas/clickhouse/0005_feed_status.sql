-- object: feed_status
-- placement: sharded by cityHash64(feed_id)
-- Online/offline transitions found by the heartbeat agent. A transition's id comes from the
-- feed, the new status and the moment it changed, so a re-detected transition collapses.
CREATE TABLE IF NOT EXISTS {{feed_status}} {{on_cluster}}
(
    transition_id UUID,
    feed_id String,
    owner_department LowCardinality(String),
    status LowCardinality(String),
    previous_status LowCardinality(String),
    changed_at DateTime64(3, 'UTC'),
    last_seen_at Nullable(DateTime64(3, 'UTC')),
    reason LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine: ReplacingMergeTree}}
PARTITION BY toYYYYMM(changed_at)
ORDER BY (feed_id, changed_at, transition_id)
