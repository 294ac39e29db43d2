"""A feed.status event encoded straight from its document (registry_api/feeds/events,
``encoded_document_event``: the liveness applier's hot path) is, byte for byte, the envelope
the validated ``CloudEvent`` model writes, and each has an id of its own."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from registry_api.feeds.documents import event_data
from registry_api.feeds.events import encoded_document_event
from schemas.events import SCHEMA_FEED_METADATA_V1, CloudEvent, EventType
from tests.unit.test_rendered_spill import rows

AT = datetime(2026, 5, 1, 9, 30, 15, 250000, tzinfo=UTC)


def test_an_encoded_status_event_is_the_envelope_of_the_document() -> None:
    for row in rows(3):
        document = event_data({**row, "status": "online", "last_seen": AT, "revision": 2})
        encoded = encoded_document_event(EventType.FEED_STATUS, document, AT)
        event_id = uuid.UUID(orjson.loads(encoded)["id"])
        expected = CloudEvent(
            id=event_id,
            type=EventType.FEED_STATUS,
            time=AT,
            subject=document["id"],
            dataschema=SCHEMA_FEED_METADATA_V1,
            data=document,
        )
        assert encoded == expected.to_bytes()
        # and the registry's consumers read it as the event it is
        read = CloudEvent.from_bytes(encoded)
        assert (read.type, read.subject, read.time, read.data) == (
            "feedgrid.feed.status",
            document["id"],
            AT,
            orjson.loads(orjson.dumps(document, option=orjson.OPT_UTC_Z)),
        )


def test_each_encoded_event_has_an_id_of_its_own() -> None:
    [row] = rows(1)
    document = event_data(row)
    ids = {
        orjson.loads(encoded_document_event(EventType.FEED_STATUS, document, AT))["id"]
        for _ in range(100)
    }
    assert len(ids) == 100
