"""Two readers of every feed-metadata message: each worker's feed catalog (the facts that
enrich events) and the batch path's feed-metadata handler (a row of ``feed_metadata`` per
version). They must accept and refuse the same messages, and know each feed alike; the row
keeps the feed document as it came."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from schemas.dead_letter import DeadLetter
from schemas.events import SCHEMA_FEED_METADATA_V1
from streams.batch import Batch
from streams.catalog import FeedCatalog, FeedFacts
from streams.feed_metadata import FeedMetadataHandler

# A feed document as the registry publishes it (demo city), with the parts the catalog skips.
DOCUMENT: dict[str, Any] = {
    "id": "06H3ZFPX8KZTGEKSM93B0M8F",
    "kind": "camera",
    "code": "62012200001310000463",
    "owner": "lz-psb",
    "name": "Dongping Road camera 395",
    "location": {"type": "Point", "coordinates": [104.025788, 36.079384]},
    "altitude": 1532.4,
    "fov": {"heading": 251.4, "angle": 104.0, "range_m": 57.0},
    "coverage": None,
    "gb28181": {"region": "62012200", "industry": "00", "type": "131", "serial": "000463"},
    "stream": {"protocol": "rtsp", "media_path": "lz-psb/62012200001310000463"},
    "datastreams": [],
    "catalog": {"resource_name": "Dongping Road camera 395 live video", "related_codes": []},
    "sharing": {"class": "unconditional", "conditions": None, "legal_basis": None},
    "tags": ["road"],
    "status": "online",
    "last_seen": "2026-12-04T06:30:34.927411Z",
    "version": 1,
    "revision": 2,
    "created_at": "2026-12-04T06:29:46.842600Z",
    "updated_at": "2026-12-04T06:29:46.842600Z",
    "retired": False,
    "retired_at": None,
}


def message(data: Any, **envelope: Any) -> bytes:
    event = {
        "specversion": "1.0",
        "id": "7fb381bf-2a58-409d-b252-8900779d9f43",
        "source": "/feedgrid/registry",
        "type": "feedgrid.feed.status",
        "time": "2026-12-04T06:31:00.768555Z",
        "subject": "06H3ZFPX8KZTGEKSM93B0M8F",
        "datacontenttype": "application/json",
        "dataschema": SCHEMA_FEED_METADATA_V1,
        "data": data,
    }
    event.update(envelope)
    return orjson.dumps({key: value for key, value in event.items() if value is not ...})


def changed(**fields: Any) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    for key, value in fields.items():
        if value is ...:
            document.pop(key, None)
        else:
            document[key] = value
    return document


VALID = {
    "registry document": message(DOCUMENT),
    "GB code only (no gb28181 part)": message(changed(gb28181=None)),
    "own region over the code's": message(changed(region="620103")),
    "sensor without a code": message(changed(kind="sensor", code="", gb28181=None)),
    "sharing_class spelling": message(changed(sharing={"sharing_class": "conditional"})),
    "no sharing": message(changed(sharing=None)),
    "version above revision": message(changed(version=7, revision=3)),
    "aliases feed_id and owner_department": message(
        {**changed(id=..., owner=...), "feed_id": "F-2", "owner_department": "lz-tb"}
    ),
    "registered": message(DOCUMENT, type="feedgrid.feed.registered"),
    "retired": message(changed(retired=True), type="feedgrid.feed.retired"),
    "no dataschema": message(DOCUMENT, dataschema=None),
}
INVALID = {
    "not JSON": b"{not json",
    "empty": b"",
    "no id": message(changed(id=...)),
    "empty id": message(changed(id="")),
    "negative version": message(changed(version=-1)),
    "revision not a number": message(changed(revision="two")),
    "created_at not a time": message(changed(created_at="yesterday")),
    "location not an object": message(changed(location=[104.0, 36.0])),
    "retired not a flag": message(changed(retired="perhaps")),
    "data not an object": message([1, 2, 3]),
    "an access event's type": message(DOCUMENT, type="feedgrid.access.requested"),
    "another dataschema": message(DOCUMENT, dataschema="feedgrid:access-event:v1"),
    "envelope field unknown": message(DOCUMENT, extra="x"),
    "envelope id not a UUID": message(DOCUMENT, id="42"),
}


def record(raw: bytes, offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="feed-metadata", partition=2, offset=offset, timestamp=1_796_000_000_000,
        timestamp_type=0, key=b"06H3ZFPX8KZTGEKSM93B0M8F", value=raw, checksum=None,
        serialized_key_size=24, serialized_value_size=len(raw), headers=(),
    )  # fmt: skip


def stored(*raws: bytes) -> Batch:
    """What the batch path's feed-metadata handler makes of the messages."""
    batch = Batch()
    records = [record(raw, offset) for offset, raw in enumerate(raws)]
    FeedMetadataHandler(dead_letter_topic="dead-letter").prepare(records, batch)
    return batch


def row_facts(raw: bytes) -> FeedFacts | None:
    """The message's ``feed_metadata`` row as catalog facts (None: set aside)."""
    batch = stored(raw)
    if not batch.feed_metadata:
        assert batch.rejected == 1 and len(batch.outgoing) == 1
        return None
    (row,) = batch.feed_metadata
    return FeedFacts(
        row["version"], row["owner_department"], row["kind"], row["region"], row["industry"],
        row["sharing_class"],
    )  # fmt: skip


@pytest.mark.parametrize("raw", VALID.values(), ids=VALID.keys())
def test_the_catalog_knows_a_feed_as_its_stored_row_does(raw: bytes) -> None:
    expected = row_facts(raw)
    assert expected is not None
    catalog = FeedCatalog("unused:9092", "feed-metadata")
    assert catalog.apply(raw) is True
    data = orjson.loads(raw)["data"]
    feed_id = data.get("id") or data["feed_id"]
    assert catalog.get(feed_id) == expected


@pytest.mark.parametrize("raw", INVALID.values(), ids=INVALID.keys())
def test_the_catalog_refuses_what_is_set_aside_from_the_rows(raw: bytes) -> None:
    assert row_facts(raw) is None
    catalog = FeedCatalog("unused:9092", "feed-metadata")
    assert catalog.apply(raw) is False
    assert len(catalog) == 0


def test_an_older_state_never_replaces_a_newer_one() -> None:
    catalog = FeedCatalog("unused:9092", "feed-metadata")
    assert catalog.apply(message(changed(revision=5, owner="lz-tb")))
    assert catalog.apply(message(changed(revision=4, owner="lz-psb")))
    facts = catalog.get(DOCUMENT["id"])
    assert facts is not None and (facts.version, facts.owner_department) == (5, "lz-tb")
    assert catalog.apply(message(changed(revision=6, owner="lz-psb")))
    facts = catalog.get(DOCUMENT["id"])
    assert facts is not None and (facts.version, facts.owner_department) == (6, "lz-psb")


def test_a_row_keeps_the_feed_document_and_a_bad_message_goes_to_dead_letter() -> None:
    retired = message(changed(retired=False, revision=9), type="feedgrid.feed.retired")
    batch = stored(message(DOCUMENT), b"{not json", retired)
    first, second = batch.feed_metadata
    assert orjson.loads(first["document"]) == DOCUMENT  # every field, not only those read
    assert first["feed_id"] == DOCUMENT["id"] and first["version"] == 2  # the revision
    assert (first["event_type"], first["status"], first["retired"]) == (
        "feed.status",
        "online",
        False,
    )
    assert (first["region"], first["industry"], first["sharing_class"]) == (
        "620122", "00", "unconditional",
    )  # fmt: skip
    assert (first["longitude"], first["latitude"]) == (104.025788, 36.079384)
    assert first["registered_at"].isoformat() == "2026-12-04T06:29:46.842600+00:00"
    assert second["retired"] is True and second["version"] == 9  # retired by its type
    (letter,) = batch.outgoing
    assert batch.rejected == 1 and letter.topic == "dead-letter"
    body = DeadLetter.model_validate_json(letter.value)
    assert (body.offset, body.payload) == (1, "{not json")
    assert body.reason.startswith("schema violation")
