"""Writing events to the outbox inside the caller's transaction: the one place outbox rows
are built. An event is a (topic suffix, key, encoded CloudEvent) triple; the key keeps
per-entity order on the topic, and the row is published only if the caller's transaction commits.

A row holds one message (``messages`` = 1: the payload under ``key``), or a bundle of a
batch's consecutive messages to one topic (``messages`` > 1: the payload is the messages
framed one after the other, each its key's length, the key, the value's length, the value).
An access request writes hundreds of events: as bundles they are a few rows to insert, read
and mark sent instead of one each, and the relay still publishes every message under its own
key, in order.

A writer may ask for its bundles of ``COMPRESS_AT_LEAST`` bytes or more to be stored
compressed (``codec`` "zstd", level 1); the access writers (requests, owners' decisions,
revocations) do. An
access request's events are JSON that repeats itself (the same request, departments and grant
in every one): 219 KB of them compress to 10 KB in 0.2 ms. Stored as they were, they were
written to SQLite's log at the commit, to the database at the checkpoint, and again whole when
the relay marked the row sent (SQLite rewrites a row that grows, its overflow pages too).

Compression is asked for, not the default: every compressor gives up the GIL while it works,
and taking it back waits up to the interpreter's switch interval (5 ms) when another thread is
busy. A writer calling it on the event loop stalls the loop that long per bundle: the access
writers accept that for their one large bundle per call, the hooks' frequent batches stay as
they are. The relay decompresses in a worker thread."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast

import cramjam
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
ZSTD = "zstd"
COMPRESS_AT_LEAST = 4096  # bytes of a framed bundle: below this compression gains little
ZSTD_LEVEL = 1  # level 3: 5 % larger than level 1 on access events, and 60 % slower


def frame_bundle(messages: Sequence[tuple[str, bytes]]) -> bytes:
    """The payload of a bundle row: each (key, value) framed in turn."""
    pieces: list[bytes] = []
    for key, value in messages:
        encoded = key.encode()
        if len(encoded) > MAX_KEY_BYTES:
            raise ValueError(f"an outbox key of {len(encoded)} bytes does not fit a bundle")
        pieces += (_FRAME.pack(len(encoded), len(value)), encoded, value)
    return b"".join(pieces)


def compressed_bundle(framed: bytes) -> tuple[bytes, str | None]:
    """A framed bundle as it is stored, and its codec (None: as it is)."""
    if len(framed) < COMPRESS_AT_LEAST:
        return framed, None
    return bytes(cramjam.zstd.compress(framed, level=ZSTD_LEVEL)), ZSTD


def stored_bundle(payload: bytes, codec: str | None) -> bytes:
    """A bundle row's framed messages, from its payload as stored. A bundle holds at most
    ``BUNDLE_BYTES``: a payload that would decompress to more is refused, not expanded."""
    if codec is None:
        return payload
    if codec != ZSTD:
        raise ValueError(f"an outbox bundle stored with an unknown codec {codec!r}")
    output = bytearray(BUNDLE_BYTES)
    try:
        size = cramjam.zstd.decompress_into(payload, output)
    except cramjam.DecompressionError as error:
        raise ValueError(
            f"an outbox bundle does not decompress to at most {BUNDLE_BYTES} bytes: {error}"
        ) from None
    return bytes(memoryview(output)[:size])


def row_messages(
    key: str, payload: bytes, messages: int, codec: str | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) messages an outbox row holds, in order."""
    if messages <= 1:
        yield key.encode(), payload
        return
    payload = stored_bundle(payload, codec)
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


def bundled_values(
    events: Iterable[OutboxEvent], *, created_at: datetime, compress: bool = False
) -> list[dict[str, Any]]:
    """The outbox rows (column values) of the events: consecutive events to one topic go into
    bundles of at most ``BUNDLE_MESSAGES`` messages and ``BUNDLE_BYTES``, compressed if
    ``compress`` and large enough (see the module's notes)."""
    rows: list[dict[str, Any]] = []
    group: list[tuple[str, bytes]] = []
    group_topic = ""
    group_bytes = 0

    def close() -> None:
        if len(group) == 1:
            [(key, value)] = group
            rows.append(_row(group_topic, key, value, 1, created_at))
        elif group:
            framed = frame_bundle(group)
            payload, codec = compressed_bundle(framed) if compress else (framed, None)
            rows.append(_row(group_topic, group[0][0], payload, len(group), created_at, codec))
        group.clear()

    for topic, key, payload in events:
        size = _FRAME.size + len(key.encode()) + len(payload)
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
    topic: str,
    key: str,
    payload: bytes,
    messages: int,
    created_at: datetime,
    codec: str | None = None,
) -> dict[str, Any]:
    return {
        "topic": topic,
        "key": key,
        "payload": payload,
        "created_at": created_at,
        "messages": messages,
        "codec": codec,
    }


async def enqueue_many(session: AsyncSession, events: list[OutboxEvent]) -> None:
    """Adds encoded events, in bundles, by one INSERT in the caller's transaction."""
    if not events:
        return
    await session.execute(insert(OutboxMessage), bundled_values(events, created_at=utcnow()))


def prepare_enqueue(
    events: list[OutboxEvent], *, created_at: datetime, dialect: Dialect, compress: bool = False
) -> DriverInsert:
    """``enqueue_many`` prepared ahead, CPU only (see ``registry_api.bulk_insert``): for
    writers that must keep the event loop free while they write thousands of events."""
    rows = bundled_values(events, created_at=created_at, compress=compress)
    return prepare_insert(OUTBOX_TABLE, rows, dialect)


async def enqueue_prepared(session: AsyncSession, prepared: DriverInsert) -> None:
    """Writes what :func:`prepare_enqueue` prepared, in the caller's transaction."""
    await execute_insert(session, prepared)
