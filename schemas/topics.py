"""Kafka topic names and their configuration: the contract between producers and agents."""

from __future__ import annotations

from dataclasses import dataclass, field

FEED_METADATA = "feed-metadata"
ACCESS_EVENTS = "access-events"
HEARTBEATS = "heartbeats"
FEED_STATUS = "feed-status"
# Internal to the workers: retrievals re-keyed by requester for the per-requester rules.
REQUESTER_ACTIVITY = "requester-activity"
ALERTS = "alerts"
DEAD_LETTER = "dead-letter"


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    key: str
    config: dict[str, str] = field(default_factory=dict)


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    # Latest state per feed survives compaction; the sink keeps every version in ClickHouse.
    TopicSpec(
        FEED_METADATA, "feed_id", {"cleanup.policy": "compact", "min.compaction.lag.ms": "3600000"}
    ),
    TopicSpec(
        ACCESS_EVENTS, "feed_id", {"cleanup.policy": "delete", "retention.ms": str(14 * 86_400_000)}
    ),
    TopicSpec(HEARTBEATS, "feed_id", {"cleanup.policy": "delete", "retention.ms": str(86_400_000)}),
    # Liveness decided by the workers, applied to the registry by the API side (its one writer).
    TopicSpec(
        FEED_STATUS, "feed_id", {"cleanup.policy": "delete", "retention.ms": str(7 * 86_400_000)}
    ),
    TopicSpec(
        REQUESTER_ACTIVITY,
        "requester",
        {"cleanup.policy": "delete", "retention.ms": str(86_400_000)},
    ),
    TopicSpec(
        ALERTS, "subject", {"cleanup.policy": "delete", "retention.ms": str(30 * 86_400_000)}
    ),
    TopicSpec(
        DEAD_LETTER,
        "original key",
        {"cleanup.policy": "delete", "retention.ms": str(30 * 86_400_000)},
    ),
)


def topic_name(prefix: str, suffix: str) -> str:
    return f"{prefix}{suffix}"
