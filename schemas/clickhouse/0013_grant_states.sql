-- object: grant_states
-- placement: sharded by cityHash64(feed_id)
-- What the workers know of each grant (from grant.issued / grant.revoked), kept to judge
-- retrievals after a restart or a rebalance. The sink writes a grant's state in the same
-- batch as the events that changed it and before their offsets are committed, so this table
-- is never behind the committed position. Latest version (event time in ms) wins.
CREATE TABLE IF NOT EXISTS {{grant_states}} {{on_cluster}}
(
    feed_id String,
    grant_id String,
    state String,
    ends_at Nullable(DateTime64(3, 'UTC')),
    version UInt64
)
ENGINE = {{engine: ReplacingMergeTree(version)}}
ORDER BY (feed_id, grant_id)
