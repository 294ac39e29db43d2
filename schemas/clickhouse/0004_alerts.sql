-- object: alerts
-- placement: sharded by cityHash64(alert_id)
-- Anomalies raised by the agents. alert_id is derived from the rule and the triggering event,
-- so a replayed event raises the same alert_id and collapses here.
CREATE TABLE IF NOT EXISTS {{alerts}} {{on_cluster}}
(
    alert_id UUID,
    time DateTime64(3, 'UTC'),
    rule LowCardinality(String),
    severity LowCardinality(String),
    feed_id String,
    owner_department LowCardinality(String),
    requester_department LowCardinality(String),
    requester_user String,
    grant_id String,
    token_id String,
    message String,
    evidence String,
    trigger_event_id UUID,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine: ReplacingMergeTree}}
PARTITION BY toYYYYMM(time)
ORDER BY (rule, time, alert_id)
