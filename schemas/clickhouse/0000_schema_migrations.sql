-- object: schema_migrations
-- placement: everywhere
-- Which numbered migrations have been applied; read and written only by streams.migrations.
CREATE TABLE IF NOT EXISTS {{schema_migrations}} {{on_cluster}}
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine: ReplacingMergeTree(applied_at)}}
ORDER BY version
