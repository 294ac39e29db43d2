-- object: decisions
-- placement: sharded by cityHash64(request_id)
-- One row per access request and feed, in its latest state: `version` orders the events of a
-- request (a decision beats the request it answers), so FINAL gives the current state.
CREATE TABLE IF NOT EXISTS {{decisions}} {{on_cluster}}
(
    request_id String,
    feed_id String,
    version UInt64,
    event_id UUID,
    time DateTime64(3, 'UTC'),
    owner_department LowCardinality(String),
    requester_department LowCardinality(String),
    requester_user String,
    purpose String,
    decision LowCardinality(String),
    reason String,
    emergency Bool,
    requested_at DateTime64(3, 'UTC'),
    decided_at Nullable(DateTime64(3, 'UTC')),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine: ReplacingMergeTree(version)}}
PARTITION BY toYYYYMM(requested_at)
ORDER BY (owner_department, request_id, feed_id)
