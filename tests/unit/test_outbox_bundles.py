"""Outbox bundles: a batch's consecutive messages to one topic framed into one row, read back
whole and in order (the relay publishes each under its own key)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from registry_api.outbox import service
from registry_api.outbox.service import bundled_values, frame_bundle, row_messages

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def _messages(rows: list[dict]) -> list[tuple[str, bytes, bytes]]:
    return [
        (row["topic"], key, value)
        for row in rows
        for key, value in row_messages(row["key"], row["payload"], row["messages"])
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
