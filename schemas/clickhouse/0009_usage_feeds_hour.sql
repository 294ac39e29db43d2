-- object: usage_feeds_hour
-- placement: sharded by cityHash64(feed_id)
-- Retrievals per hour and feed (with its owner, kind and region, and the requester
-- department), kept by the materialized view below from every insert into access_events.
-- Distinct requesters are uniq states of a 64-bit hash of department/user: exact while a
-- bucket holds fewer than 65,536 requesters (bar hash collisions), approximate above.
CREATE TABLE IF NOT EXISTS {{usage_feeds_hour}} {{on_cluster}}
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
    requesters AggregateFunction(uniq, UInt64),
    INDEX feed_bloom feed_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = {{engine: AggregatingMergeTree}}
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, feed_id, owner_department, requester_department, kind, region)
SETTINGS non_replicated_deduplication_window = 10000, replicated_deduplication_window = 10000;

-- object: usage_feeds_hour_mv
-- placement: view
CREATE MATERIALIZED VIEW IF NOT EXISTS {{usage_feeds_hour_mv}} {{on_cluster}}
TO {{usage_feeds_hour}}
AS SELECT
    toStartOfHour(time) AS bucket,
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
