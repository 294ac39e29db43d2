"""Feed-metadata events: the full state of a feed after each write, for the outbox.

Encoded straight from the feed's document (``encode_cloud_event``), without an envelope model:
a bulk import writes tens of thousands at once and a city's status changes as many, on the
API's event loop (8 against 16 us a feed through a model, measured). A writer that renders the
feeds anyway (a bulk import) cuts each event's data from the feed's rendering instead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from orjson import Fragment

from registry_api.feeds.documents import event_data
from registry_api.feeds.rendered import event_data_json
from registry_api.outbox.service import OutboxEvent
from schemas.events import SCHEMA_FEED_METADATA_V1, EventType, encode_cloud_event, new_event_id
from schemas.topics import FEED_METADATA


def document_outbox_row(
    event_type: EventType, document: dict[str, Any], time: datetime
) -> OutboxEvent:
    """The outbox event (topic, key, bytes) of a feed's document, rendered already as its event
    data (``event_data``: internal fields included): a CloudEvent with a new id and this
    ``time``. The key keeps per-feed order."""
    return _feed_event(event_type, document["id"], document, time)


def outbox_row(event_type: EventType, row: Mapping[Any, Any], time: datetime) -> OutboxEvent:
    """:func:`document_outbox_row` of a feed row: the event ``enqueue_many`` takes."""
    return document_outbox_row(event_type, event_data(row), time)


def rendered_outbox_row(
    event_type: EventType, feed_id: str, rendering: bytes, time: datetime
) -> OutboxEvent:
    """:func:`outbox_row` of a feed whose stored rendering (``rendered.py``) is made already:
    the event's data is cut from it, byte for byte what encoding the row would give."""
    return _feed_event(event_type, feed_id, event_data_json(rendering), time)


def rendered_outbox_rows(
    written: Sequence[tuple[EventType, Sequence[Mapping[Any, Any]]]],
    renderings: Sequence[bytes],
    time: datetime,
) -> list[OutboxEvent]:
    """:func:`rendered_outbox_row` of every row written, in groups by event type (inserts,
    updates, ...): ``renderings`` holds the rows' renderings in the same order, groups one
    after the other."""
    events: list[OutboxEvent] = []
    start = 0
    for event_type, rows in written:
        end = start + len(rows)
        events += [
            rendered_outbox_row(event_type, row["id"], rendering, time)
            for row, rendering in zip(rows, renderings[start:end], strict=True)
        ]
        start = end
    if start != len(renderings):
        raise ValueError(f"{len(renderings)} renderings for {start} rows")
    return events


def _feed_event(
    event_type: EventType, feed_id: str, data: dict[str, Any] | Fragment, time: datetime
) -> OutboxEvent:
    encoded = encode_cloud_event(
        id=new_event_id(),
        type=event_type,
        time=time,
        subject=feed_id,
        dataschema=SCHEMA_FEED_METADATA_V1,
        data=data,
    )
    return FEED_METADATA, feed_id, encoded
