"""Every version of every feed into ClickHouse (``feed_metadata``), on the batch path.

The registry publishes a feed's whole document on ``feed-metadata`` whenever the feed changes,
its status included: while a city comes online that is one message per camera. Read through
Faust's per-message stream this was about a third of the worker's time in such a storm (a
conductor hop, a channel queue and an acknowledgement per message); here it is a list of
records per fetch, stored as one block before the offsets commit, like the other batch topics.

A message is checked exactly as the feed catalog checks it (:func:`decode_feed_fields`: the
envelope and the fields the streams read); a bad one goes to the dead-letter topic with its
reason. The row keeps those fields as columns and the whole feed document as JSON.
``feed_metadata`` is a ReplacingMergeTree on the feed's version, so a batch read twice (a
restart before its commit) stores nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from streams.batch import Batch
from streams.decoding import decode_feed_fields
from streams.feeds import FeedFieldsEvent, point_of, region_and_industry, sharing_class_of

AGENT_NAME = "feed-metadata"
RETIRED = "feedgrid.feed.retired"


def metadata_row(event: FeedFieldsEvent, document: str) -> dict[str, Any]:
    """The ``feed_metadata`` row of one checked message; ``document`` is its data as JSON."""
    data = event.data
    region, industry = region_and_industry(data)
    longitude, latitude = point_of(data.location)
    return {
        "feed_id": data.id,
        "version": data.state_version,
        "event_id": event.id,
        "event_type": event.type.removeprefix("feedgrid."),
        "time": event.time,
        "name": data.name,
        "owner_department": data.owner,
        "kind": data.kind,
        "region": region,
        "industry": industry,
        "sharing_class": sharing_class_of(data),
        "status": data.status,
        "device_code": data.code,
        "longitude": longitude,
        "latitude": latitude,
        "retired": data.retired or event.type == RETIRED,
        "registered_at": data.created_at,
        "document": document,
    }


def document_of(raw: bytes | bytearray | memoryview) -> str:
    """The message's feed document as JSON text (the message was checked: it has one)."""
    return orjson.dumps(orjson.loads(raw)["data"]).decode()


class FeedMetadataHandler:
    name = AGENT_NAME

    def __init__(self, *, dead_letter_topic: str) -> None:
        self.dead_letter_topic = dead_letter_topic

    def restore(self, url: str, owns: Callable[[str], bool]) -> int:
        """Nothing to read back: every row stands on its own."""
        return 0

    def prepare(self, records: Sequence[ConsumerRecord[Any, Any]], batch: Batch) -> None:
        rows = batch.feed_metadata
        for record, event in batch.decoded(records, decode_feed_fields, self.dead_letter_topic):
            rows.append(metadata_row(event, document_of(record.value)))
