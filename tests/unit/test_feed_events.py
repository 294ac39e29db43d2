"""A feed-metadata event encoded straight from the feed's document (registry_api/feeds/events:
every feed write's outbox event, the bulk imports' and the liveness applier's hot paths) is,
byte for byte, the envelope the validated ``CloudEvent`` model writes, and each has an id of its
own, ordered by time; and one whose data is cut from the feed's stored rendering is the same
event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from registry_api.feeds.documents import event_data
from registry_api.feeds.events import outbox_row, rendered_outbox_row
from registry_api.feeds.index.records import Vocabulary
from registry_api.feeds.rendered import render_rows
from schemas.events import SCHEMA_FEED_METADATA_V1, CloudEvent, EventType
from schemas.topics import FEED_METADATA
from tests.unit.test_rendered_spill import rows

AT = datetime(2026, 5, 1, 9, 30, 15, 250000, tzinfo=UTC)


def test_an_encoded_feed_event_is_the_envelope_of_the_document() -> None:
    types = (EventType.FEED_REGISTERED, EventType.FEED_STATUS, EventType.FEED_RETIRED)
    for event_type, row in zip(types, rows(3), strict=True):
        row = {**row, "status": "online", "last_seen": AT, "revision": 2}
        topic, key, encoded = outbox_row(event_type, row, AT)
        assert (topic, key) == (FEED_METADATA, row["id"])
        document = event_data(row)
        event_id = uuid.UUID(orjson.loads(encoded)["id"])
        expected = CloudEvent(
            id=event_id,
            type=event_type,
            time=AT,
            subject=document["id"],
            dataschema=SCHEMA_FEED_METADATA_V1,
            data=document,
        )
        assert encoded == expected.to_bytes()
        # and the registry's consumers read it as the event it is
        read = CloudEvent.from_bytes(encoded)
        assert (read.type, read.subject, read.time, read.data) == (
            event_type,
            document["id"],
            AT,
            orjson.loads(orjson.dumps(document, option=orjson.OPT_UTC_Z)),
        )


def test_each_encoded_event_has_an_id_of_its_own_ordered_by_time() -> None:
    [row] = rows(1)
    ids = [
        uuid.UUID(orjson.loads(outbox_row(EventType.FEED_STATUS, row, AT)[2])["id"])
        for _ in range(100)
    ]
    assert len(set(ids)) == 100
    assert {event_id.version for event_id in ids} == {7}


def test_an_event_cut_from_the_rendering_is_the_event_of_the_row() -> None:
    camera, unviewed, named, seen = rows(4)
    variants = [
        camera,
        {**unviewed, "fov": None},  # no view: the rendering ends with "fov_polygon":null
        {**named, "name": 'the ,"fov_polygon": corner'},  # the key's text inside a value
        {**seen, "status": "online", "last_seen": AT, "revision": 7, "retired_at": AT},
    ]
    renderings = render_rows(variants, Vocabulary())
    for row, rendering in zip(variants, renderings, strict=True):
        for event_type in (EventType.FEED_REGISTERED, EventType.FEED_UPDATED):
            topic, key, cut = rendered_outbox_row(event_type, row["id"], rendering, AT)
            expected = outbox_row(event_type, row, AT)
            assert (topic, key) == expected[:2]
            # the same bytes but for the event's own id
            own_id, expected_id = (orjson.loads(event)["id"] for event in (cut, expected[2]))
            assert cut.replace(own_id.encode(), expected_id.encode()) == expected[2]
