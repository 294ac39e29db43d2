"""Feed-metadata events: the full state of a feed after each write, for the outbox."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry_api.feeds.documents import event_data
from schemas.events import SCHEMA_FEED_METADATA_V1, CloudEvent
from schemas.topics import FEED_METADATA

FEED_REGISTERED = "feedgrid.feed.registered"
FEED_UPDATED = "feedgrid.feed.updated"
FEED_RETIRED = "feedgrid.feed.retired"
FEED_STATUS = "feedgrid.feed.status"


def feed_event(event_type: str, row: Mapping[str, Any]) -> CloudEvent:
    """A CloudEvent carrying the feed's whole current state (internal fields included)."""
    return CloudEvent(
        type=event_type,
        subject=row["id"],
        dataschema=SCHEMA_FEED_METADATA_V1,
        data=event_data(row),
    )


def outbox_row(event_type: str, row: Mapping[str, Any]) -> tuple[str, str, CloudEvent]:
    """The (topic, key, event) triple ``enqueue_many`` takes; the key keeps per-feed order."""
    return FEED_METADATA, row["id"], feed_event(event_type, row)
