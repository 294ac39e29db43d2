"""Turning raw Kafka values into validated CloudEvents, or an InvalidMessage with the reason."""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from schemas.events import (
    ACCESS_EVENT_TYPES,
    FEED_EVENT_TYPES,
    HEARTBEAT_EVENT_TYPE,
    SCHEMA_ACCESS_EVENT_V1,
    SCHEMA_FEED_METADATA_V1,
    SCHEMA_HEARTBEAT_V1,
    AccessEventData,
    CloudEvent,
    HeartbeatData,
)
from streams.dead_letter import InvalidMessage
from streams.feeds import FeedFieldsEvent


class AccessCloudEvent(CloudEvent):
    """An access-events message: the envelope and its payload validated in one pass."""

    data: AccessEventData  # type: ignore[assignment]


class HeartbeatCloudEvent(CloudEvent):
    data: HeartbeatData  # type: ignore[assignment]


EventT = TypeVar("EventT", bound=CloudEvent)


def _describe(error: ValidationError) -> str:
    item = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in item["loc"]) or "message"
    return f"schema violation at {where}: {item['msg']}"


def _decode(model: type[EventT], raw: object, types: tuple[str, ...], dataschema: str) -> EventT:
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if not isinstance(raw, bytes | bytearray) or not raw:
        raise InvalidMessage("empty or non-binary message value")
    try:
        event = model.model_validate_json(raw)
    except ValidationError as error:
        raise InvalidMessage(_describe(error)) from None
    if event.type not in types:
        raise InvalidMessage(f"unexpected event type {event.type!r} on this topic")
    if event.dataschema is not None and event.dataschema != dataschema:
        raise InvalidMessage(f"unsupported dataschema {event.dataschema!r} (expected {dataschema})")
    return event


def decode_access_event(raw: object) -> AccessCloudEvent:
    return _decode(AccessCloudEvent, raw, ACCESS_EVENT_TYPES, SCHEMA_ACCESS_EVENT_V1)


def decode_heartbeat(raw: object) -> HeartbeatCloudEvent:
    return _decode(HeartbeatCloudEvent, raw, (HEARTBEAT_EVENT_TYPE,), SCHEMA_HEARTBEAT_V1)


def decode_feed_fields(raw: object) -> FeedFieldsEvent:
    """A feed-metadata message: the envelope and the feed fields the streams read are checked,
    the rest of the feed document is skipped rather than kept."""
    return _decode(FeedFieldsEvent, raw, FEED_EVENT_TYPES, SCHEMA_FEED_METADATA_V1)
