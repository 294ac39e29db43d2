-- object: escalations
-- placement: sharded by cityHash64(request_id)
-- Each request and feed the deadline keeper escalated (access.escalated events), by the time
-- of the request: what the decisions report counts as escalated, read from a row per
-- escalation where the raw events hold every access event of the city. A row that comes twice
-- (a replay, the backfill) counts once: the report counts distinct request and feed pairs.
CREATE TABLE IF NOT EXISTS {{escalations}} {{on_cluster}}
(
    request_id String,
    feed_id String,
    owner_department LowCardinality(String),
    requester_department LowCardinality(String),
    requested_at DateTime64(3, 'UTC'),
    escalated_at DateTime64(3, 'UTC')
)
ENGINE = {{engine: ReplacingMergeTree}}
PARTITION BY toYYYYMM(requested_at)
ORDER BY (owner_department, request_id, feed_id);

-- object: escalations_mv
-- placement: view
-- backfill: by month of time
CREATE MATERIALIZED VIEW IF NOT EXISTS {{escalations_mv}} {{on_cluster}}
TO {{escalations}}
AS SELECT
    request_id,
    feed_id,
    owner_department,
    requester_department,
    assumeNotNull(requested_at) AS requested_at,
    time AS escalated_at
FROM {{access_events}}
WHERE type = 'access.escalated' AND requested_at IS NOT NULL
