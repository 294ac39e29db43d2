-- object: feed_activity_day
-- placement: sharded by cityHash64(feed_id)
-- Retrievals per day (UTC) and feed, all requesters together: one row per feed and day, what
-- city-wide feed rankings and the dormant-feed report read. Department-scoped feed figures
-- need the requester and use usage_feeds_hour. Distinct requesters (a 64-bit hash of
-- department/user) and requesting departments are uniq states, exact below 65,536 a row.
CREATE TABLE IF NOT EXISTS {{feed_activity_day}} {{on_cluster}}
(
    bucket DateTime('UTC'),
    feed_id String,
    owner_department LowCardinality(String),
    kind LowCardinality(String),
    region LowCardinality(String),
    retrievals SimpleAggregateFunction(sum, UInt64),
    denied SimpleAggregateFunction(sum, UInt64),
    bytes SimpleAggregateFunction(sum, UInt64),
    seconds SimpleAggregateFunction(sum, Float64),
    requesters AggregateFunction(uniq, UInt64),
    requester_departments AggregateFunction(uniq, String)
)
ENGINE = {{engine: AggregatingMergeTree}}
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, feed_id, owner_department, kind, region)
SETTINGS non_replicated_deduplication_window = 10000, replicated_deduplication_window = 10000;

-- object: feed_activity_day_mv
-- placement: view
CREATE MATERIALIZED VIEW IF NOT EXISTS {{feed_activity_day_mv}} {{on_cluster}}
TO {{feed_activity_day}}
AS SELECT
    toStartOfDay(time, 'UTC') AS bucket,
    feed_id,
    owner_department,
    kind,
    region,
    countIf(type = 'retrieval.started') AS retrievals,
    countIf(type = 'retrieval.denied') AS denied,
    sumIf(bytes, type = 'retrieval.ended') AS bytes,
    sumIf(duration_seconds, type = 'retrieval.ended') AS seconds,
    uniqStateIf(sipHash64(requester_department, requester_user), type = 'retrieval.started')
        AS requesters,
    uniqStateIf(requester_department, type = 'retrieval.started') AS requester_departments
FROM {{access_events}}
WHERE type IN ('retrieval.started', 'retrieval.ended', 'retrieval.denied')
GROUP BY bucket, feed_id, owner_department, kind, region
