"""Writing events to the outbox inside the caller's transaction: the one place outbox rows
are built. An event is a (topic suffix, key, encoded CloudEvent) triple; the key keeps
per-entity order on the topic, and the row is published only if the caller's transaction commits.

A row holds one message (``messages`` = 1: the payload under ``key``), or a bundle of a
batch's consecutive messages to one topic (``messages`` > 1: the payload is the messages
framed one after the other, each its key's length, the key, the value's length, the value).
An access request writes hundreds of events: as bundles they are a few rows to insert, read
and mark sent instead of one each, and the relay still publishes every message under its own
key, in order."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.bulk_insert import DriverInsert, prepare_insert
from registry_api.driver_work import execute_insert
from registry_api.outbox.models import OutboxMessage
from schemas.events import utcnow

OutboxEvent = tuple[str, str, bytes]
"""(topic suffix, key, the CloudEvent's bytes)"""

OUTBOX_TABLE = cast(Table, OutboxMessage.__table__)


BUNDLE_MESSAGES = 1_000  # at most this many messages in one row
BUNDLE_BYTES = 1024 * 1024  # and about this many bytes (a single larger message: a row alone)
_FRAME = struct.Struct("<HI")  # key length, value length
MAX_KEY_BYTES = 0xFFFF


def frame_bundle(messages: Sequence[tuple[str, bytes]]) -> bytes:
    """The payload of a bundle row: each (key, value) framed in turn."""
    pieces: list[bytes] = []
    for key, value in messages:
        encoded = key.encode()
        if len(encoded) > MAX_KEY_BYTES:
            raise ValueError(f"an outbox key of {len(encoded)} bytes does not fit a bundle")
        pieces += (_FRAME.pack(len(encoded), len(value)), encoded, value)
    return b"".join(pieces)


def row_messages(key: str, payload: bytes, messages: int) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) messages an outbox row holds, in order."""
    if messages <= 1:
        yield key.encode(), payload
        return
    view = memoryview(payload)
    offset = 0
    for _ in range(messages):
        if offset + _FRAME.size > len(payload):
            raise ValueError("an outbox bundle ends before its messages do")
        key_length, value_length = _FRAME.unpack_from(view, offset)
        offset += _FRAME.size
        if offset + key_length + value_length > len(payload):
            raise ValueError("an outbox bundle ends before its messages do")
        message_key = bytes(view[offset : offset + key_length])
        offset += key_length
        yield message_key, bytes(view[offset : offset + value_length])
        offset += value_length
    if offset != len(payload):
        raise ValueError(f"an outbox bundle holds {len(payload) - offset} bytes past its messages")


def bundled_values(events: Iterable[OutboxEvent], *, created_at: datetime) -> list[dict[str, Any]]:
    """The outbox rows (column values) of the events: consecutive events to one topic go into
    bundles of at most ``BUNDLE_MESSAGES`` messages and ``BUNDLE_BYTES``."""
    rows: list[dict[str, Any]] = []
    group: list[tuple[str, bytes]] = []
    group_topic = ""
    group_bytes = 0

    def close() -> None:
        if len(group) == 1:
            [(key, value)] = group
            rows.append(_row(group_topic, key, value, 1, created_at))
        elif group:
            rows.append(_row(group_topic, group[0][0], frame_bundle(group), len(group), created_at))
        group.clear()

    for topic, key, payload in events:
        size = _FRAME.size + len(key) + len(payload)
        if group and (
            topic != group_topic
            or len(group) >= BUNDLE_MESSAGES
            or group_bytes + size > BUNDLE_BYTES
        ):
            close()
        if not group:
            group_topic, group_bytes = topic, 0
        group.append((key, payload))
        group_bytes += size
    close()
    return rows


def _row(
    topic: str, key: str, payload: bytes, messages: int, created_at: datetime
) -> dict[str, Any]:
    return {
        "topic": topic,
        "key": key,
        "payload": payload,
        "created_at": created_at,
        "messages": messages,
    }


async def enqueue_many(session: AsyncSession, events: list[OutboxEvent]) -> None:
    """Adds encoded events, in bundles, by one INSERT in the caller's transaction."""
    if not events:
        return
    await session.execute(insert(OutboxMessage), bundled_values(events, created_at=utcnow()))


def prepare_enqueue(
    events: list[OutboxEvent], *, created_at: datetime, dialect: Dialect
) -> DriverInsert:
    """``enqueue_many`` prepared ahead, CPU only (see ``registry_api.bulk_insert``): for
    writers that must keep the event loop free while they write thousands of events."""
    return prepare_insert(OUTBOX_TABLE, bundled_values(events, created_at=created_at), dialect)


async def enqueue_prepared(session: AsyncSession, prepared: DriverInsert) -> None:
    """Writes what :func:`prepare_enqueue` prepared, in the caller's transaction."""
    await execute_insert(session, prepared)
