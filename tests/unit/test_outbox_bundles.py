"""Outbox bundles: a batch's consecutive messages to one topic framed into one row, read back
whole and in order (the relay publishes each under its own key)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from registry_api.outbox import service
from registry_api.outbox.service import (
    BUNDLE_BYTES,
    COMPRESS_AT_LEAST,
    ZSTD,
    bundled_values,
    compressed_bundle,
    frame_bundle,
    row_messages,
)

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def _messages(rows: list[dict]) -> list[tuple[str, bytes, bytes]]:
    return [
        (row["topic"], key, value)
        for row in rows
        for key, value in row_messages(row["key"], row["payload"], row["messages"], row["codec"])
    ]


def test_consecutive_messages_to_a_topic_share_a_row_and_read_back_in_order() -> None:
    events = [("access-events", f"feed-{n % 7}", f'{{"n":{n}}}'.encode()) for n in range(300)]
    events += [("feed-metadata", "feed-1", b"{}")]  # another topic: a row of its own
    events += [("access-events", "féed-ü", b"\x00\xff" * 3), ("access-events", "x", b"")]
    rows = bundled_values(events, created_at=NOW)
    assert [(row["topic"], row["messages"]) for row in rows] == [
        ("access-events", 300), ("feed-metadata", 1), ("access-events", 2)
    ]  # fmt: skip
    # A single message is stored as itself, under its key.
    assert (rows[1]["key"], rows[1]["payload"]) == ("feed-1", b"{}")
    assert _messages(rows) == [(topic, key.encode(), value) for topic, key, value in events]


def test_bundles_are_bounded_in_messages_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "BUNDLE_MESSAGES", 4)
    monkeypatch.setattr(service, "BUNDLE_BYTES", 100)
    events = [("t", "k", b"v" * 10) for _ in range(10)]  # 4, 4, 2 by count
    assert [row["messages"] for row in bundled_values(events, created_at=NOW)] == [4, 4, 2]
    # by size: 6 + 1 + 40 bytes a frame, two fit in 100 bytes; one larger message goes alone
    events = [("t", "k", b"v" * 40)] * 3 + [("t", "k", b"v" * 500), ("t", "k", b"v")]
    rows = bundled_values(events, created_at=NOW)
    assert [row["messages"] for row in rows] == [2, 1, 1, 1]
    assert _messages(rows) == [(topic, key.encode(), value) for topic, key, value in events]


def test_a_damaged_bundle_is_refused_not_misread() -> None:
    payload = frame_bundle([("a", b"1"), ("b", b"22")])
    with pytest.raises(ValueError, match="past its messages"):
        list(row_messages("a", payload + b"x", 2))
    for cut in (payload[:-1], payload[:4]):
        with pytest.raises(ValueError, match="ends before"):
            list(row_messages("a", cut, 2))
    with pytest.raises(ValueError, match="ends before"):  # it says more than it holds
        list(row_messages("a", payload, 3))


def test_a_large_bundle_asked_compressed_is_stored_so_and_a_small_one_as_it_is() -> None:
    # an access request's events: JSON that repeats itself, one feed's id apart
    value = b'{"request_id":"01a24a37ae3473c9","owner":"lz-psb","decision":"granted","feed":"%03d"}'
    events = [("access-events", f"feed-{n}", value % n) for n in range(300)]
    small = [("access-events", "feed-1", b"{}"), ("access-events", "feed-2", b"{}")]
    large_row, small_row = bundled_values(events, created_at=NOW, compress=True) + bundled_values(
        small, created_at=NOW, compress=True
    )
    framed = frame_bundle([(key, payload) for _, key, payload in events])
    assert len(framed) >= COMPRESS_AT_LEAST
    assert large_row["codec"] == ZSTD
    assert len(large_row["payload"]) * 5 < len(framed)
    assert small_row["codec"] is None
    assert small_row["payload"] == frame_bundle([(key, payload) for _, key, payload in small])
    assert _messages([large_row, small_row]) == [
        (topic, key.encode(), payload) for topic, key, payload in events + small
    ]
    # Unasked, a writer's bundles stay as they are (compressing on the event loop can stall it).
    [unasked] = bundled_values(events, created_at=NOW)
    assert (unasked["codec"], unasked["payload"]) == (None, framed)


def test_a_compressed_bundle_that_cannot_be_read_within_bounds_is_refused() -> None:
    payload, codec = compressed_bundle(frame_bundle([("k", b"v" * 5000), ("k", b"w")]))
    assert codec == ZSTD
    assert [value for _, value in row_messages("k", payload, 2, codec)] == [b"v" * 5000, b"w"]
    with pytest.raises(ValueError, match="unknown codec 'brotli'"):
        list(row_messages("k", payload, 2, "brotli"))
    with pytest.raises(ValueError, match="does not decompress"):
        list(row_messages("k", payload[:-8], 2, codec))
    # A bundle never holds more than BUNDLE_BYTES: a row that would expand past it (a bomb, or
    # a row from a build with a larger bound) is refused rather than expanded.
    expanding, _ = compressed_bundle(b"\x00" * (BUNDLE_BYTES + 1))
    with pytest.raises(ValueError, match=f"at most {BUNDLE_BYTES} bytes"):
        list(row_messages("k", expanding, 2, codec))
