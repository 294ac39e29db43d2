-- object: usage_scopes_day
-- placement: sharded by cityHash64(feed_id)
-- Retrievals per day, feed and department taking part: what a department's ranking of feeds
-- reads to find the feeds that can reach its top places. A department sees the events of the
-- feeds it owns and its own retrievals of others' feeds; each event is counted once under its
-- owner and once more under its requester when that is another department, so a department's
-- rows are its feeds' totals (one row per feed and day) where usage_feeds_day holds one row
-- per feed, day and requester for every owner and has to be read for both of them.
CREATE TABLE IF NOT EXISTS {{usage_scopes_day}} {{on_cluster}}
(
    bucket DateTime('UTC'),
    scope_department LowCardinality(String),
    feed_id String,
    owner_department LowCardinality(String),
    kind LowCardinality(String),
    region LowCardinality(String),
    retrievals SimpleAggregateFunction(sum, UInt64),
    denied SimpleAggregateFunction(sum, UInt64),
    bytes SimpleAggregateFunction(sum, UInt64),
    seconds SimpleAggregateFunction(sum, Float64)
)
ENGINE = {{engine: AggregatingMergeTree}}
PARTITION BY toYYYYMM(bucket)
ORDER BY (scope_department, bucket, feed_id, owner_department, kind, region)
SETTINGS non_replicated_deduplication_window = 10000, replicated_deduplication_window = 10000;

-- object: usage_scopes_day_mv
-- placement: view
-- backfill: by month of time, rebuilding bucket
-- The backfill sums the events stored before the view existed, each month's buckets rebuilt
-- whole (a second run replaces them); the stream worker migrates before it consumes.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{usage_scopes_day_mv}} {{on_cluster}}
TO {{usage_scopes_day}}
AS SELECT
    toStartOfDay(time, 'UTC') AS bucket,
    scope_department,
    feed_id,
    owner_department,
    kind,
    region,
    countIf(type = 'retrieval.started') AS retrievals,
    countIf(type = 'retrieval.denied') AS denied,
    sumIf(bytes, type = 'retrieval.ended') AS bytes,
    sumIf(duration_seconds, type = 'retrieval.ended') AS seconds
FROM {{access_events}}
ARRAY JOIN if(requester_department = '' OR requester_department = owner_department,
              [owner_department], [owner_department, requester_department]) AS scope_department
WHERE type IN ('retrieval.started', 'retrieval.ended', 'retrieval.denied')
GROUP BY bucket, scope_department, feed_id, owner_department, kind, region;

-- object: usage_feeds_hour_by_feed
-- placement: sharded by cityHash64(feed_id)
-- The figures of usage_feeds_hour ordered by feed first, in small granules: the rows of the
-- few feeds a ranking kept (hours at hour precision, distinct-count states included) are
-- read together, where usage_feeds_hour spreads a feed over every bucket's granules and a
-- ranking of twenty feeds would decode the states of all of them.
CREATE TABLE IF NOT EXISTS {{usage_feeds_hour_by_feed}} {{on_cluster}}
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
ORDER BY (feed_id, bucket, owner_department, requester_department, kind, region)
SETTINGS index_granularity = 1024,
         non_replicated_deduplication_window = 10000, replicated_deduplication_window = 10000;

-- object: usage_feeds_hour_by_feed_mv
-- placement: view
-- backfill: by month of time, rebuilding bucket
-- Backfilled as above.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{usage_feeds_hour_by_feed_mv}} {{on_cluster}}
TO {{usage_feeds_hour_by_feed}}
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
