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
ORDER BY (feed_id, grant_id);

-- object: sink_offsets
-- placement: everywhere
-- The highest Kafka offset per partition the sink is about to insert, written just before
-- each block: after a restart, records at or before it may already be stored and are looked
-- up by event id; records after it are new and skip the look-up. Written before the block,
-- so a crash between the two widens the look-ups and never narrows them.
CREATE TABLE IF NOT EXISTS {{sink_offsets}} {{on_cluster}}
(
    table_name LowCardinality(String),
    partition UInt32,
    offset UInt64,
    sink_block UInt64,
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine: ReplacingMergeTree(offset)}}
ORDER BY (table_name, partition)
