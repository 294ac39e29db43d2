-- object: usage_departments_day
-- placement: sharded by cityHash64(owner_department, requester_department)
-- Retrievals per day (UTC) by owner department, requester department, kind and region: the
-- long-period twin of usage_departments_hour (periods spanning whole days read these rows
-- for the whole days and the hourly rows for the ends), kept by the view below.
-- Distinct requesters are uniq states of a 64-bit hash of department/user: exact while a
-- bucket holds fewer than 65,536 requesters (bar hash collisions), approximate above.
CREATE TABLE IF NOT EXISTS {{usage_departments_day}} {{on_cluster}}
(
    bucket DateTime('UTC'),
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
ORDER BY (bucket, owner_department, requester_department, kind, region)
SETTINGS non_replicated_deduplication_window = 10000, replicated_deduplication_window = 10000;

-- object: usage_departments_day_mv
-- placement: view
CREATE MATERIALIZED VIEW IF NOT EXISTS {{usage_departments_day_mv}} {{on_cluster}}
TO {{usage_departments_day}}
AS SELECT
    toStartOfDay(time, 'UTC') AS bucket,
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
GROUP BY bucket, owner_department, requester_department, kind, region
