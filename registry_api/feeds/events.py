"""Feed-metadata events: the full state of a feed after each write, for the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from registry_api.feeds.documents import event_data
from schemas.events import (
    EVENT_SOURCE_REGISTRY,
    SCHEMA_FEED_METADATA_V1,
    CloudEvent,
    EventType,
    utcnow,
)
from schemas.topics import FEED_METADATA

# Former name, kept for its importers outside this package until they use EventType.
FEED_STATUS = EventType.FEED_STATUS


class TrustedEvent(CloudEvent):
    """A CloudEvent serialised by orjson. The JSON is exactly what ``CloudEvent.to_bytes``
    writes (same keys, same order, RFC 3339 UTC times with ``Z``) at a third of the cost:
    bulk imports write tens of thousands of these."""

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "specversion": self.specversion,
                "id": self.id,
                "source": self.source,
                "type": self.type,
                "time": self.time,
                "subject": self.subject,
                "datacontenttype": self.datacontenttype,
                "dataschema": self.dataschema,
                "data": self.data,
            },
            option=orjson.OPT_UTC_Z,
        )


_EVENT_FIELDS = frozenset(CloudEvent.model_fields)


def feed_event(event_type: EventType, row: Mapping[Any, Any]) -> CloudEvent:
    """A CloudEvent carrying the feed's whole current state (internal fields included).

    Built with ``model_construct`` and every field given: the data is our own document, and
    validating a copy of it would cost more than the rest of the event (bulk imports).
    """
    return TrustedEvent.model_construct(
        _fields_set=set(_EVENT_FIELDS),
        specversion="1.0",
        id=uuid.uuid4(),
        source=EVENT_SOURCE_REGISTRY,
        type=event_type,
        time=utcnow(),
        subject=row["id"],
        datacontenttype="application/json",
        dataschema=SCHEMA_FEED_METADATA_V1,
        data=event_data(row),
    )


def outbox_row(event_type: EventType, row: Mapping[Any, Any]) -> tuple[str, str, CloudEvent]:
    """The (topic, key, event) triple ``enqueue_many`` takes; the key keeps per-feed order."""
    return FEED_METADATA, row["id"], feed_event(event_type, row)
