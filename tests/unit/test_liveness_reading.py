"""Reading the workers' feed-status events: what the registry is asked to write, per feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from registry_api.feeds.liveness import LivenessBatch, read_liveness
from schemas.events import LIVENESS_CHANGED_EVENT_TYPE, LIVENESS_SEEN_EVENT_TYPE

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)


def _event(event_type: str, feed_id: str, status: str, last_seen: str | None) -> bytes:
    data = {"feed_id": feed_id, "status": status, "last_seen": last_seen}
    return orjson.dumps(
        {"type": event_type, "dataschema": "feedgrid:liveness:v1", "data": data, "id": "x"}
    )


def test_a_batch_keeps_the_last_transition_and_the_newest_sighting_of_each_feed() -> None:
    messages = [
        _event(LIVENESS_CHANGED_EVENT_TYPE, "A", "online", "2026-05-01T06:00:00Z"),
        _event(LIVENESS_SEEN_EVENT_TYPE, "A", "online", "2026-05-01T06:01:00Z"),
        _event(LIVENESS_SEEN_EVENT_TYPE, "A", "online", "2026-05-01T05:59:00Z"),
        _event(LIVENESS_CHANGED_EVENT_TYPE, "A", "offline", None),
        _event(LIVENESS_SEEN_EVENT_TYPE, "B", "offline", "2026-05-01T08:00:00+02:00"),
    ]
    batch = LivenessBatch()
    for message in messages:
        event = read_liveness(message)
        assert event is not None
        batch.add(event)
    assert batch.statuses == {"A": "offline"}  # a "seen" never sets a status
    assert batch.seen == {"A": T0 + timedelta(minutes=1), "B": T0}


def test_unreadable_messages_are_none_never_an_exception() -> None:
    valid = _event(LIVENESS_SEEN_EVENT_TYPE, "A", "online", "2026-05-01T06:00:00Z")
    assert read_liveness(valid) is not None
    garbage = [
        None,
        b"",
        b"{not json",
        b"[]",
        b'{"type": "feedgrid.liveness.seen"}',
        _event("feedgrid.heartbeat", "A", "online", None),
        _event(LIVENESS_CHANGED_EVENT_TYPE, "A", "asleep", None),
        _event(LIVENESS_CHANGED_EVENT_TYPE, "", "online", None),
        _event(LIVENESS_SEEN_EVENT_TYPE, "A", "online", "0001-01-01T00:00:00Z"),
        valid.replace(b"feedgrid:liveness:v1", b"feedgrid:liveness:v9"),
    ]
    assert [read_liveness(message) for message in garbage] == [None] * len(garbage)


def test_a_batch_splits_by_feed_and_the_parts_add_up_to_it() -> None:
    batch = LivenessBatch()
    for number in range(8):  # F1, F4 and F7 ask for nothing
        feed_id = f"F{number}"
        if number in (0, 2, 3, 6):
            batch.statuses[feed_id] = "online"
        if number in (0, 5, 6):
            batch.seen[feed_id] = T0 + timedelta(seconds=number)
    parts = batch.parts(3)
    assert [sorted({*part.statuses, *part.seen}) for part in parts] == [
        ["F0", "F2", "F3"],
        ["F5", "F6"],
    ]
    # every feed in exactly one part, with both its status and its sighting
    joined_statuses: dict[str, str] = {}
    joined_seen: dict[str, datetime] = {}
    for part in parts:
        assert not joined_statuses.keys() & part.statuses.keys()
        assert not joined_seen.keys() & part.seen.keys()
        joined_statuses.update(part.statuses)
        joined_seen.update(part.seen)
    assert joined_statuses == batch.statuses
    assert joined_seen == batch.seen
    assert LivenessBatch().parts(3) == []
