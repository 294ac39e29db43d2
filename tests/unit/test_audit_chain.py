"""The audit hash chain as pure functions: altered, removed and truncated entries are found."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.engine import Dialect

from registry_api.audit.chain import (
    GENESIS_HASH,
    ChainLink,
    ChainVerifier,
    canonical_bytes,
    chain_link_bytes,
    entry_hash,
    extend_chain,
    link_bytes,
    verify_links,
)
from registry_api.audit.service import (
    AUDIT_TABLE,
    EncodedAccessEvent,
    audit_fields,
    prepare_events,
    unchained_events,
)
from registry_api.bulk_insert import prepare_insert
from schemas.events import AccessEventData, EventType, new_event_id

T0 = datetime(2025, 3, 12, 2, 0, tzinfo=UTC)


def _entries(count: int) -> list[dict[str, Any]]:
    return [
        {
            "event_type": "feedgrid.retrieval.started",
            "occurred_at": T0 + timedelta(seconds=index),
            "feed_id": f"feed-{index}",
            "data": {"feed_id": f"feed-{index}", "bytes": index, "duration_seconds": 0.5},
        }
        for index in range(count)
    ]


def _links(rows: list[dict[str, Any]]) -> list[ChainLink]:
    return [
        ChainLink(
            seq=row["seq"],
            previous_hash=row["previous_hash"],
            entry_hash=row["entry_hash"],
            fields={key: value for key, value in row.items() if key != "entry_hash"},
        )
        for row in rows
    ]


def test_canonical_json_ignores_key_order_and_time_zone() -> None:
    from zoneinfo import ZoneInfo

    local = T0.astimezone(ZoneInfo("Asia/Shanghai"))
    assert canonical_bytes({"b": 1, "a": T0}) == canonical_bytes({"a": local, "b": 1})
    assert canonical_bytes({"a": T0}) == b'{"a":"2025-03-12T02:00:00.000000Z"}'


def test_intact_chain_verifies() -> None:
    rows = extend_chain(GENESIS_HASH, 0, _entries(5))
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["previous_hash"] == GENESIS_HASH
    assert all(rows[i]["previous_hash"] == rows[i - 1]["entry_hash"] for i in range(1, 5))
    assert verify_links(_links(rows)) is None


def test_chain_continues_from_a_head() -> None:
    first = extend_chain(GENESIS_HASH, 0, _entries(3))
    second = extend_chain(first[-1]["entry_hash"], 3, _entries(2))
    assert verify_links(_links(first + second)) is None


def test_altered_entry_is_reported_at_its_sequence_number() -> None:
    rows = extend_chain(GENESIS_HASH, 0, _entries(5))
    rows[2] = dict(rows[2], data={**rows[2]["data"], "bytes": 999})
    broken = verify_links(_links(rows))
    assert broken is not None and (broken.seq, broken.problem) == (3, "altered_entry")


def test_altered_entry_with_recomputed_hash_breaks_the_next_link() -> None:
    rows = extend_chain(GENESIS_HASH, 0, _entries(5))
    forged = {key: value for key, value in rows[1].items() if key != "entry_hash"}
    forged["feed_id"] = "someone-else"
    rows[1] = dict(forged, entry_hash=entry_hash(forged))
    broken = verify_links(_links(rows))
    assert broken is not None and (broken.seq, broken.problem) == (3, "broken_link")


def test_removed_entry_is_reported_as_missing() -> None:
    rows = extend_chain(GENESIS_HASH, 0, _entries(5))
    del rows[3]
    broken = verify_links(_links(rows))
    assert broken is not None and (broken.seq, broken.problem) == (4, "missing_entry")


def test_removed_newest_entries_are_caught_against_the_head() -> None:
    rows = extend_chain(GENESIS_HASH, 0, _entries(5))
    verifier = ChainVerifier()
    for link in _links(rows[:3]):
        assert verifier.check(link) is None
    broken = verifier.finish(head_seq=5, head_hash=rows[-1]["entry_hash"])
    assert broken is not None and (broken.seq, broken.problem) == (4, "truncated")


@given(st.integers(min_value=1, max_value=30), st.data())
def test_any_single_change_is_detected_at_or_before_the_next_entry(
    count: int, data: st.DataObject
) -> None:
    rows = extend_chain(GENESIS_HASH, 0, _entries(count))
    target = data.draw(st.integers(min_value=0, max_value=count - 1))
    rows[target] = dict(rows[target], event_type="feedgrid.retrieval.denied")
    broken = verify_links(_links(rows))
    assert broken is not None and broken.seq == target + 1


def test_event_ids_are_unique_and_ordered_by_the_time_they_were_made() -> None:
    from schemas.events import new_event_id

    first = [new_event_id() for _ in range(2_000)]
    time.sleep(0.002)
    later = [new_event_id() for _ in range(10)]
    assert len(set(first + later)) == len(first) + len(later)
    assert {event_id.version for event_id in first + later} == {7}
    assert max(first) < min(later)  # the millisecond comes first: a later id sorts later


def test_ids_made_at_once_are_the_text_of_version_7_uuids_ordered_by_time() -> None:
    """``new_event_ids`` writes the ids out itself: each must read back as the UUID it
    claims to be (RFC 9562 version 7 and variant, the text ``str(UUID)`` gives), unique, with
    the millisecond it was made, and sort before the ids made later."""
    import uuid

    from schemas.events import new_event_ids

    assert new_event_ids(0) == []
    before_ms = time.time_ns() // 1_000_000
    first = new_event_ids(5_000)
    after_ms = time.time_ns() // 1_000_000
    time.sleep(0.002)
    later = new_event_ids(3)
    assert len(set(first + later)) == len(first) + len(later)
    for text in first + later:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert {uuid.UUID(text).int >> 80 for text in first} <= set(range(before_ms, after_ms + 1))
    assert max(first) < min(later)
    # the random part takes every value its digits can hold: the variant's two random bits
    assert {text[19] for text in first} == set("89ab")
    # the 12 bits after the version: 5,000 draws of 4,096 values give about 2,890 distinct
    assert len({text[15:18] for text in first}) > 2_700


def test_a_requests_events_take_ids_from_batches_each_once() -> None:
    """``EventPayloads`` makes its events' ids in growing batches: every event of a request
    (a single one, or 1,000 over several batches) has an id of its own, a version 7 UUID."""
    import uuid

    from registry_api.access.models import AccessRequest
    from registry_api.access.records import EventPayloads, new_id

    request = AccessRequest(
        id=new_id(), requester="key:x", requester_department="lz-tb", purpose="public safety",
        actions=["live"], valid_from=T0, valid_until=T0 + timedelta(hours=1), emergency=False,
        emergency_reason=None, created_at=T0,
    )  # fmt: skip
    for count in (1, 1_000):
        payloads = EventPayloads(request)
        shape = payloads.shape("lz-psb", ["live"])
        events = [
            payloads.of_shape(shape, EventType.ACCESS_REQUESTED, f"f-{n}", "key:x", T0)
            for n in range(count)
        ]
        ids = [str(event.event_id) for event in events]
        assert len(set(ids)) == count
        assert {uuid.UUID(text).version for text in ids} == {7}
        assert [event.feed_id for event in events] == [f"f-{n}" for n in range(count)]


def test_request_and_grant_ids_are_time_ordered_hex() -> None:
    """Indexes are keyed by them: made later, they sort later (taken on the indexes' last
    pages instead of landing on a random page each)."""
    import uuid

    from registry_api.access.records import new_id

    first = [new_id() for _ in range(1_000)]
    time.sleep(0.002)
    later = new_id()
    assert len(set(first)) == len(first)
    assert all(len(made) == 32 and uuid.UUID(hex=made).version == 7 for made in first)
    assert max(first) < later


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # control characters, quotes, NUL
_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | _TEXT
    | st.datetimes(timezones=st.just(UTC))
)


@given(
    st.lists(
        st.dictionaries(
            _TEXT.filter(lambda key: key not in ("seq", "previous_hash", "entry_hash")),
            _VALUES | st.dictionaries(_TEXT, _VALUES, max_size=3),
            max_size=6,
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=0, max_value=2**62),
    st.sampled_from([GENESIS_HASH, "ab" * 32, 'not "hex" \x00']),
)
def test_links_prepared_before_the_head_hash_as_the_chain_does(
    entries: list[dict[str, Any]], head_seq: int, head_hash: str
) -> None:
    expected = extend_chain(head_hash, head_seq, entries)
    chained = chain_link_bytes(head_hash, head_seq, [link_bytes(entry) for entry in entries])
    assert chained == [(row["seq"], row["previous_hash"], row["entry_hash"]) for row in expected]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), asyncpg.dialect()], ids=["sqlite", "pg"])
def test_audit_rows_chained_in_the_turn_equal_the_rows_of_the_whole_entries(
    dialect: Dialect,
) -> None:
    now = datetime.now(UTC)
    payload = AccessEventData(
        feed_id="f-1", requester_department="lz-tb", action="live", requested_at=now,
        request_id="r-1", owner_department="lz-psb", decision="granted", reason="public_feed",
    ).model_dump(mode="json")  # fmt: skip
    events = [
        EncodedAccessEvent(EventType.ACCESS_DECIDED, {**payload, "feed_id": f"f-{n}"}, "policy",
                           new_event_id(), now)
        for n in range(4)
    ]  # fmt: skip
    prepared = prepare_events(41, "cd" * 32, events, now, dialect)
    whole = extend_chain("cd" * 32, 41, [audit_fields(event, event.payload()) for event in events])
    assert prepared.audit == prepare_insert(AUDIT_TABLE, whole, dialect)
    assert (prepared.last_seq, prepared.last_hash) == (45, whole[-1]["entry_hash"])


_SHAPE_VALUES = st.fixed_dictionaries(
    {
        "requester_department": _TEXT,
        "owner_department": st.none() | _TEXT,
        "request_id": st.none() | _TEXT,
        "grant_id": st.none() | _TEXT,
        "purpose": st.none() | _TEXT,
        "decision": st.sampled_from([None, "granted", "pending", "denied", "revoked"]),
        "reason": st.none() | _TEXT,
        "emergency": st.booleans(),
        "decided_at": st.none() | st.datetimes(timezones=st.just(UTC)),
    }
)


@given(
    shapes=st.lists(_SHAPE_VALUES, min_size=1, max_size=3),
    made=st.lists(
        st.tuples(
            st.integers(0, 2),  # which shape (none: an event encoded on its own)
            st.sampled_from([EventType.ACCESS_REQUESTED, EventType.ACCESS_DECIDED]),
            st.sampled_from(["policy", None, 'o"wner\x00']),
            _TEXT,  # the feed id
        ),
        min_size=1,
        max_size=12,
    ),
    dialect=st.sampled_from([sqlite.dialect(), asyncpg.dialect()]),
)
def test_events_of_one_shape_are_encoded_as_each_alone(
    shapes: list[dict[str, Any]],
    made: list[tuple[int, EventType, str | None, str]],
    dialect: Dialect,
) -> None:
    """Events made from a shared payload shape (an access request's, an owner's decision)
    are encoded from templates: their CloudEvents, chain links and audit rows are exactly
    what each event encoded on its own gives, whatever their text holds."""
    payloads = [
        AccessEventData(feed_id="", requested_at=T0, **values).model_dump(mode="json")
        for values in shapes
    ]
    shaped: list[EncodedAccessEvent] = []
    for which, event_type, actor, feed_id in made:
        shape = payloads[which] if which < len(payloads) else None
        data = {**(shape or payloads[0]), "feed_id": feed_id}
        shaped.append(EncodedAccessEvent(event_type, data, actor, new_event_id(), T0, shape))
    alone = [EncodedAccessEvent(*event[:5]) for event in shaped]
    expected = unchained_events(alone, T0, dialect, compress=True)
    found = unchained_events(shaped, T0, dialect, compress=True)
    assert found.links == expected.links
    assert found.audit == expected.audit
    assert found.outbox == expected.outbox
    assert chain_link_bytes("ab" * 32, 7, found.links) == [
        (row["seq"], row["previous_hash"], row["entry_hash"])
        for row in extend_chain(
            "ab" * 32, 7, [audit_fields(event, event.payload()) for event in alone]
        )
    ]
