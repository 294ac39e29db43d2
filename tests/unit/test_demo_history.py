"""The demo's recorded week: a week of access events, each at its own time, none in the future,
plays inside their grants' windows except the misuse the alert rules are there to catch."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from deploy.demo_history import HISTORY_SOURCE, RecordedWeek, encode
from deploy.demo_traffic import ReplayedRequest, spread_sample, waves
from schemas.events import EventType
from streams.decoding import decode_access_event

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
WEEK_START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # the seeded week, long ago


def _replayed(count: int) -> list[ReplayedRequest]:
    """Requests of three departments for another's feeds, spread over a week: most granted by
    the policy, some by the owner, a few denied or left pending."""
    owners = ("lz-psb", "lz-tb", "lz-cmb")
    items = []
    for line in range(count):
        requester = owners[line % 3]
        owner = owners[(line + 1) % 3]
        feeds = []
        for k in range(3):
            outcome = ("granted", "granted", "denied", "pending")[(line + k) % 4]
            by_owner = (line + k) % 5 == 0
            feeds.append(
                {
                    "feed_id": f"{owner}-feed-{(line * 3 + k) % 300}",
                    "owner_department": owner,
                    "outcome": outcome,
                    "reason": "unconditional_sharing" if outcome == "granted" else "other",
                    "actions": ["live"],
                    "decided_by": "desk" if by_owner and outcome != "pending" else None,
                }
            )
        items.append(
            ReplayedRequest(
                line=line,
                request_id=f"r{line}",
                requester_department=requester,
                officer=line % 4,
                minutes=60,
                emergency=False,
                initial={},
                final={"feeds": feeds},
                purpose="traffic management",
                action="live",
                at=WEEK_START + timedelta(minutes=line * 7 * 24 * 60 / count),
            )
        )
    return items


def test_the_recorded_week_ends_before_now_and_spans_the_week() -> None:
    week = RecordedWeek(_replayed(600), NOW, seed=1)
    events = week.build()
    times = [event.time for event in events]
    assert times == sorted(times)
    assert max(times) <= NOW - timedelta(minutes=5)
    assert min(times) >= NOW - timedelta(days=7, minutes=10)
    days = Counter(time.date() for time in times if _is(events, time, EventType.RETRIEVAL_STARTED))
    assert len(days) >= 7
    summary = week.summary
    assert summary.requests == 600 and summary.grants > 0 and summary.retrievals > 0
    assert summary.retrievals == sum(
        1 for event in events if event.type == EventType.RETRIEVAL_STARTED
    )


def _is(events: list[Any], time: datetime, kind: EventType) -> bool:
    return any(event.time == time and event.type == kind for event in events)


def test_plays_fall_in_their_grants_windows_but_the_misuse() -> None:
    week = RecordedWeek(_replayed(600), NOW, seed=1)
    events = week.build()
    windows: dict[str, tuple[datetime, datetime]] = {}
    for event in events:
        if event.type == EventType.GRANT_ISSUED:
            data = event.data
            windows[data["grant_id"]] = (data["grant_valid_from"], data["grant_valid_until"])
    outside = 0
    tokens: dict[str, set[str]] = {}
    for event in events:
        if event.type != EventType.RETRIEVAL_STARTED:
            continue
        start, end = windows[event.data["grant_id"]]  # every play names a grant of the record
        assert event.time >= start
        outside += event.time > end
        tokens.setdefault(event.data["token_id"], set()).add(event.data["client_ip"])
    assert outside == week.summary.misuse["retrieval_outside_grant"] > 0
    shared = sum(1 for addresses in tokens.values() if len(addresses) > 1)
    assert shared == week.summary.misuse["token_multiple_ips"] > 0
    recent = [e for e in events if e.time > NOW - timedelta(days=1)]
    assert any(e.type == EventType.RETRIEVAL_STARTED for e in recent)


def test_a_harvest_opens_more_feeds_in_a_minute_than_the_limit() -> None:
    week = RecordedWeek(_replayed(600), NOW, seed=1)
    events = week.build()
    assert week.summary.misuse["bulk_harvesting"] >= 1
    by_minute: Counter[tuple[str, str]] = Counter()
    for event in events:
        if event.type == EventType.RETRIEVAL_STARTED:
            minute = event.time.replace(second=0, microsecond=0).isoformat()
            by_minute[(event.data["requester_user"], minute)] += 1
    assert max(by_minute.values()) > 50


def test_every_event_is_a_valid_access_event_marked_as_the_record() -> None:
    events = RecordedWeek(_replayed(60), NOW, seed=1).build()
    for event in events:
        key, value = encode(event)
        decoded = decode_access_event(value)
        assert decoded.source == HISTORY_SOURCE
        assert decoded.time == event.time
        assert key == decoded.data.feed_id.encode()
        assert orjson.loads(value)["id"]
    again = RecordedWeek(_replayed(60), NOW, seed=1).build()
    assert [encode(event) for event in again] == [encode(event) for event in events]


def test_a_week_recorded_in_waves_is_the_whole_weeks_requests_with_one_set_of_misuse() -> None:
    replayed = _replayed(600)
    latest = max(item.at for item in replayed if item.at)
    first = spread_sample(replayed, 100)
    rest = [item for item in replayed if item not in first]
    parts = [
        RecordedWeek(first, NOW, seed=1, latest=latest, misuse=True),
        RecordedWeek(rest, NOW, seed=1, latest=latest, misuse=False),
    ]
    events = [event for part in parts for event in part.build()]
    whole = RecordedWeek(replayed, NOW, seed=1)
    whole_events = whole.build()

    def asked(items: list[Any]) -> dict[str, datetime]:
        return {e.data["request_id"]: e.time for e in items if e.type == EventType.ACCESS_REQUESTED}

    # Each request is asked at the same moment whichever wave carried it, once.
    assert asked(events) == asked(whole_events)
    assert sorted(encode(e)[1] for e in events if e.type == EventType.ACCESS_REQUESTED) == sorted(
        encode(e)[1] for e in whole_events if e.type == EventType.ACCESS_REQUESTED
    )
    # Only the first part has misuse, and as much as a whole week has.
    assert parts[1].summary.misuse == Counter()
    assert parts[0].summary.misuse == whole.summary.misuse
    total = parts[0].summary + parts[1].summary
    assert total.events == len(events) == len({encode(e)[1] for e in events})
    assert total.retrievals == sum(e.type == EventType.RETRIEVAL_STARTED for e in events)
    assert total.start == min(e.time for e in events) and total.end == max(e.time for e in events)
    assert total.misuse == parts[0].summary.misuse


def test_waves_send_a_spread_sample_first_then_the_others_in_file_order() -> None:
    requests = list(range(20))
    first, rest = waves(requests, 5)  # type: ignore[arg-type]
    assert first == [0, 4, 8, 12, 16]
    assert rest == [n for n in requests if n not in first]
    assert waves(requests, 0) == [requests]  # type: ignore[arg-type]
    assert waves(requests, 20) == [requests]  # type: ignore[arg-type]
