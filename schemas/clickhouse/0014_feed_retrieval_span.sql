-- object: feed_retrieval_span
-- placement: sharded by cityHash64(feed_id)
-- For each feed, the first and the last hour (hours since 1970-01-01 UTC) holding a
-- retrieval: a feed whose last retrieval came before a period, or whose first came after it,
-- was not retrieved in it, and one whose first or last falls inside it was. That answers the
-- dormant-feed report for every feed at one small row per feed, where the rollups hold a row
-- per feed and day or hour; only a feed retrieved both before and after a past period needs
-- the rollups. Kept by the view below from the blocks usage_feeds_hour receives (already
-- grouped by feed and hour, so nothing is added per raw event). min and max do not change
-- when a row comes twice (a replay, a rollup repair, the backfill).
CREATE TABLE IF NOT EXISTS {{feed_retrieval_span}} {{on_cluster}}
(
    feed_id String,
    owner_department LowCardinality(String),
    first_hour SimpleAggregateFunction(min, UInt32),
    last_hour SimpleAggregateFunction(max, UInt32)
)
ENGINE = {{engine: AggregatingMergeTree}}
ORDER BY (owner_department, feed_id);

-- object: feed_retrieval_span_mv
-- placement: view
-- backfill: by month of bucket
CREATE MATERIALIZED VIEW IF NOT EXISTS {{feed_retrieval_span_mv}} {{on_cluster}}
TO {{feed_retrieval_span}}
AS SELECT
    feed_id,
    owner_department,
    min(toUInt32(intDiv(toUnixTimestamp(bucket), 3600))) AS first_hour,
    max(toUInt32(intDiv(toUnixTimestamp(bucket), 3600))) AS last_hour
FROM {{usage_feeds_hour}}
WHERE retrievals > 0
GROUP BY feed_id, owner_department
