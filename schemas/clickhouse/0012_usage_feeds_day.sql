-- object: usage_feeds_day
-- placement: sharded by cityHash64(feed_id)
-- Retrievals per day, feed and requester department: what a department's ranking of feeds
-- over days or weeks reads (usage_feeds_hour holds 24 times the rows; feed_activity_day has
-- no requester department, so it serves only the city-wide view).
CREATE TABLE IF NOT EXISTS {{usage_feeds_day}} {{on_cluster}}
(
    bucket DateTime('UTC'),
    feed_id String,
    owner_department LowCardinality(String),
    requester_department LowCardinality(String),
    kind LowCardinality(String),
    region LowCardinality(String),
    retrievals SimpleAggregateFunction(sum, UInt64),
    denied SimpleAggregateFunction(sum, UInt64),
    bytes SimpleAggregateFunction(sum, UInt64),
    seconds SimpleAggregateFunction(sum, Float64),
    requesters AggregateFunction(uniq, UInt64)
)
ENGINE = {{engine: AggregatingMergeTree}}
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, owner_department, requester_department, feed_id, kind, region)
SETTINGS non_replicated_deduplication_window = 10000, replicated_deduplication_window = 10000;

-- object: usage_feeds_day_mv
-- placement: view
CREATE MATERIALIZED VIEW IF NOT EXISTS {{usage_feeds_day_mv}} {{on_cluster}}
TO {{usage_feeds_day}}
AS SELECT
    toStartOfDay(time, 'UTC') AS bucket,
    feed_id,
    owner_department,
    requester_department,
    kind,
    region,
    countIf(type = 'retrieval.started') AS retrievals,
    countIf(type = 'retrieval.denied') AS denied,
    sumIf(bytes, type = 'retrieval.ended') AS bytes,
    sumIf(duration_seconds, type = 'retrieval.ended') AS seconds,
    uniqStateIf(sipHash64(requester_department, requester_user), type = 'retrieval.started')
        AS requesters
FROM {{access_events}}
WHERE type IN ('retrieval.started', 'retrieval.ended', 'retrieval.denied')
GROUP BY bucket, feed_id, owner_department, requester_department, kind, region
