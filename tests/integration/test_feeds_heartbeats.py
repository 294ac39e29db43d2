"""Liveness: reports go to the heartbeats topic without writing the registry; the workers'
transitions come back on feed-status and the API side applies them (its one writer)."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from infra.foreground import serving
from registry_api.driver_work import run_driver_work
from registry_api.feeds import liveness
from registry_api.feeds.documents import event_data
from registry_api.feeds.heartbeats import YIELD_EVERY, encode_reports
from registry_api.feeds.liveness import Liveness, LivenessApplier, LivenessBatch, write_liveness
from registry_api.feeds.models import feeds_table
from registry_api.identity.principal import Principal
from registry_api.outbox.models import OutboxMessage
from registry_api.outbox.service import row_messages
from schemas.events import HEARTBEAT_EVENT_TYPE, SCHEMA_HEARTBEAT_V1, HeartbeatData, utcnow
from schemas.feeds import HeartbeatBatch
from schemas.identity import Role
from schemas.settings import Settings
from schemas.topics import FEED_METADATA, HEARTBEATS
from tests.conftest import running_client
from tests.integration.feeds_support import (
    POLICE,
    TRANSPORT,
    City,
    build_city,
    camera,
    eventually,
    liveness_event,
    outbox_messages,
    publish_feed_status,
    read_topic,
)


async def _feed(city: City, feed_id: str) -> dict[str, Any]:
    document: dict[str, Any] = (await city.client.get(f"/v1/feeds/{feed_id}")).json()
    return document


def _moment(document: dict[str, Any]) -> datetime | None:
    value = document["last_seen"]
    return None if value is None else datetime.fromisoformat(value)


async def test_heartbeats_go_to_the_topic_and_write_nothing_to_the_registry(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    city = await build_city(client)
    feeds = [await city.register(camera(TRANSPORT, serial)) for serial in range(1, 6)]
    before = {feed["id"]: await _feed(city, feed["id"]) for feed in feeds}
    outbox_before = await outbox_messages(city.runtime)
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    items = [
        {
            "feed_id": feeds[number % len(feeds)]["id"],
            "status": "offline" if number % 7 == 0 else "online",
            "seen_at": (seen + timedelta(milliseconds=number)).isoformat(),
        }
        for number in range(1_000)
    ]
    response = await client.post(
        "/v1/heartbeats",
        json={"reporter": "gateway-7", "items": items},
        headers=city.as_(TRANSPORT, "gateway"),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1_000, "status_changed": 0, "rejected": []}

    # not a row written: no status, last_seen or revision moved, no outbox row added
    for feed in feeds:
        assert await _feed(city, feed["id"]) == before[feed["id"]]
        assert before[feed["id"]]["status"] == "unknown" and before[feed["id"]]["last_seen"] is None
    assert await outbox_messages(city.runtime) == outbox_before

    beats = await read_topic(
        settings.kafka_bootstrap, settings.topic_prefix, HEARTBEATS, until=1_000
    )
    assert len(beats) == 1_000 and len({str(event.id) for _, event in beats}) == 1_000
    sent = {
        (item["feed_id"], item["status"], datetime.fromisoformat(item["seen_at"])) for item in items
    }
    received = set()
    for key, event in beats:
        assert event.type == HEARTBEAT_EVENT_TYPE and event.dataschema == SCHEMA_HEARTBEAT_V1
        assert event.subject == key
        data = HeartbeatData.model_validate(event.data)
        assert data.feed_id == key and data.reporter == "gateway-7"
        received.add((data.feed_id, data.status, data.seen_at))
    assert received == sent

    # without seen_at a report is "now"; without reporter the caller is the reporter
    before_now = datetime.now(UTC)
    single = await client.post(
        "/v1/heartbeats", json={"items": [{"feed_id": feeds[0]["id"]}]},
        headers=city.as_(TRANSPORT, "gateway"),
    )  # fmt: skip
    assert single.json() == {"accepted": 1, "status_changed": 0, "rejected": []}
    beats = await read_topic(
        settings.kafka_bootstrap, settings.topic_prefix, HEARTBEATS, until=1_001
    )
    (last,) = [event for _, event in beats if event.data["reporter"] != "gateway-7"]
    assert last.data["reporter"].startswith("key:")
    assert datetime.fromisoformat(last.data["seen_at"]) >= before_now - timedelta(seconds=1)


async def test_heartbeats_for_foreign_unknown_retired_or_future_feeds_are_rejected(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    city = await build_city(client)
    own = await city.register(camera(TRANSPORT, 1))
    retired = await city.register(camera(TRANSPORT, 2))
    await client.delete(f"/v1/feeds/{retired['id']}")
    foreign = await city.register(camera(POLICE, 3))
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    batch = {
        "items": [
            {"feed_id": own["id"]},
            {"feed_id": foreign["id"]},
            {"feed_id": "01NOSUCHFEED0000000000000"},
            {"feed_id": retired["id"]},
            {"feed_id": own["id"], "seen_at": future},
            {"feed_id": own["id"] + "X"},  # a known id with more after it is not that feed
        ]
    }
    response = await client.post(
        "/v1/heartbeats", json=batch, headers=city.as_(TRANSPORT, "gateway")
    )
    result = response.json()
    assert result["accepted"] == 1 and result["status_changed"] == 0
    reasons = {reject["index"]: reject["message"] for reject in result["rejected"]}
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert POLICE in reasons[1] and "no such feed" in reasons[2]
    assert "retired" in reasons[3] and "future" in reasons[4] and "no such feed" in reasons[5]
    beats = await read_topic(settings.kafka_bootstrap, settings.topic_prefix, HEARTBEATS, until=1)
    assert [key for key, _ in beats] == [own["id"]]
    # the city admin may report any department's feeds
    admin = await client.post("/v1/heartbeats", json={"items": [{"feed_id": foreign["id"]}]})
    assert admin.json() == {"accepted": 1, "status_changed": 0, "rejected": []}
    for role in ("requester", "dept_admin"):
        refused = await client.post("/v1/heartbeats", json=batch, headers=city.as_(TRANSPORT, role))
        assert refused.status_code == 403
    malformed = await client.post(
        "/v1/heartbeats", json={"items": [{"feed_id": own["id"], "status": "asleep"}]},
        headers=city.as_(TRANSPORT, "gateway"),
    )  # fmt: skip
    assert malformed.status_code == 422


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_heartbeats_answer_503_with_retry_after_when_kafka_is_down(
    settings: Settings,
) -> None:
    offline = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{_closed_port()}"})
    async with running_client(offline) as client:
        city = await build_city(client)
        feed = await city.register(camera(TRANSPORT, 1))
        for _ in range(2):  # the first attempt to connect, then one that fails fast
            started = time.monotonic()
            response = await client.post(
                "/v1/heartbeats",
                json={"items": [{"feed_id": feed["id"]}]},
                headers=city.as_(TRANSPORT, "gateway"),
            )
            assert time.monotonic() - started < 8
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "heartbeats_unavailable"
            assert "send it again" in response.json()["message"]
            assert int(response.headers["Retry-After"]) > 0
        # a batch with nothing to publish is answered without the broker
        unknown = await client.post(
            "/v1/heartbeats", json={"items": [{"feed_id": "01NOSUCHFEED0000000000000"}]}
        )
        assert unknown.status_code == 200 and unknown.json()["accepted"] == 0
        documented = (await client.get("/openapi.json")).json()
        answers = documented["paths"]["/v1/heartbeats"]["post"]["responses"]
        assert "Retry-After" in answers["503"]["headers"]


async def _status_events(city: City, feed_id: str) -> list[dict[str, Any]]:
    async with city.runtime.sessions() as session:
        payloads = (
            await session.scalars(
                select(OutboxMessage.payload)
                .where(OutboxMessage.topic == FEED_METADATA, OutboxMessage.key == feed_id)
                .order_by(OutboxMessage.id)
            )
        ).all()
    events = [orjson.loads(payload) for payload in payloads]
    return [event for event in events if event["type"] == "feedgrid.feed.status"]


def _unreadable() -> float:
    return REGISTRY.get_sample_value("feedgrid_liveness_unreadable_total") or 0.0


async def test_worker_transitions_are_applied_once_to_registry_outbox_and_index(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    city = await build_city(client)
    feed = await city.register(camera(TRANSPORT, 1))
    feed_id = feed["id"]
    retired = await city.register(camera(TRANSPORT, 2))
    await client.delete(f"/v1/feeds/{retired['id']}")
    retired_before = await _feed(city, retired["id"])
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
    skipped_before = _unreadable()
    await publish_feed_status(
        settings,
        [
            (feed_id, b"{not json"),
            (feed_id, b'{"type": "feedgrid.liveness.changed", "data": {"status": "asleep"}}'),
            (retired["id"], liveness_event(retired["id"], "online", last_seen=seen)),
            (feed_id, liveness_event(feed_id, "online", last_seen=seen)),
        ],
    )

    async def online() -> dict[str, Any] | None:
        document = await _feed(city, feed_id)
        return document if document["status"] == "online" else None

    applied = await eventually(online)
    assert applied["revision"] == feed["revision"] + 1 and applied["version"] == feed["version"]
    assert _moment(applied) == seen
    assert _unreadable() == skipped_before + 2  # skipped, and the next one applied
    (status_event,) = await _status_events(city, feed_id)
    assert status_event["data"]["status"] == "online"
    assert status_event["data"]["revision"] == applied["revision"]
    listed = (await client.get("/v1/feeds", params={"status": "online"})).json()["items"]
    assert [item["id"] for item in listed] == [feed_id]  # the index knows
    assert await _feed(city, retired["id"]) == retired_before  # a retired feed stays as it was

    # The same transition again, then a later "seen" of the feed (same partition, after it).
    later = seen + timedelta(seconds=5)
    await publish_feed_status(
        settings,
        [
            (feed_id, liveness_event(feed_id, "online", last_seen=seen)),
            (feed_id, liveness_event(feed_id, "online", changed=False, last_seen=later)),
        ],
    )

    async def seen_later() -> dict[str, Any] | None:
        document = await _feed(city, feed_id)
        return document if _moment(document) == later else None

    again = await eventually(seen_later)
    assert again["status"] == "online" and again["revision"] == applied["revision"]
    assert len(await _status_events(city, feed_id)) == 1

    # and back offline: one more revision, one more event, the index follows
    await publish_feed_status(settings, [(feed_id, liveness_event(feed_id, "offline"))])

    async def offline() -> dict[str, Any] | None:
        document = await _feed(city, feed_id)
        return document if document["status"] == "offline" else None

    gone = await eventually(offline)
    assert gone["revision"] == applied["revision"] + 1 and _moment(gone) == later
    assert [event["data"]["status"] for event in await _status_events(city, feed_id)] == [
        "online",
        "offline",
    ]
    listed = (await client.get("/v1/feeds", params={"status": "offline"})).json()["items"]
    assert [item["id"] for item in listed] == [feed_id]


async def test_seen_moves_last_seen_forward_only_without_a_revision(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    city = await build_city(client)
    feed = await city.register(camera(TRANSPORT, 1))
    feed_id = feed["id"]
    outbox_before = await outbox_messages(city.runtime)
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)

    async def last_seen_is(moment: datetime) -> dict[str, Any] | None:
        document = await _feed(city, feed_id)
        return document if _moment(document) == moment else None

    await publish_feed_status(
        settings, [(feed_id, liveness_event(feed_id, "online", changed=False, last_seen=first))]
    )
    document = await eventually(lambda: last_seen_is(first))
    assert document["status"] == "unknown" and document["revision"] == feed["revision"]
    assert await outbox_messages(city.runtime) == outbox_before

    # an older "seen", then (same partition, after it) a transition that carries no time
    older = first - timedelta(minutes=1)
    await publish_feed_status(
        settings,
        [
            (feed_id, liveness_event(feed_id, "online", changed=False, last_seen=older)),
            (feed_id, liveness_event(feed_id, "offline", last_seen=None, reason="silence")),
        ],
    )

    async def offline() -> dict[str, Any] | None:
        document = await _feed(city, feed_id)
        return document if document["status"] == "offline" else None

    assert _moment(await eventually(offline)) == first  # never back

    newer = first + timedelta(seconds=90, milliseconds=250)
    await publish_feed_status(
        settings, [(feed_id, liveness_event(feed_id, "offline", changed=False, last_seen=newer))]
    )
    document = await eventually(lambda: last_seen_is(newer))
    assert document["status"] == "offline" and document["revision"] == feed["revision"] + 1


async def test_a_big_batch_gives_the_event_loop_turns_while_it_is_encoded(
    client: httpx.AsyncClient,
) -> None:
    # 20,000 reports (the most a batch may hold) encoded in one pass held the loop for
    # 0.4-0.5 s in `feedgrid up`: the encoding suspends every YIELD_EVERY reports instead.
    city = await build_city(client)
    feeds = [await city.register(camera(TRANSPORT, serial)) for serial in range(1, 4)]
    items = [{"feed_id": feeds[number % 3]["id"]} for number in range(20_000)]
    items[7_777] = {"feed_id": "no-such-feed"}
    batch = HeartbeatBatch.model_validate({"items": items})
    principal = Principal("gateway", TRANSPORT, frozenset({Role.gateway}))
    encoding = encode_reports(index=city.runtime.feed_index, principal=principal, batch=batch)
    suspensions = 0
    try:
        while True:
            encoding.send(None)
            suspensions += 1
    except StopIteration as done:
        records, rejected = done.value
    assert suspensions == 20_000 // YIELD_EVERY - 1
    assert len(records) == 19_999 and [reject.index for reject in rejected] == [7_777]
    assert {key.decode() for key, _ in records} == {feed["id"] for feed in feeds}


async def _liveness_outcome(
    city: City, feed_ids: list[str], write: Callable[[AsyncSession], Awaitable[Any]]
) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]], list[bytes]]:
    """What ``write`` leaves in its (rolled back) transaction: the feeds' status, revision and
    last_seen, the outbox events it added (envelope ids and times aside), and the changed
    feeds' event data it returned, encoded."""
    async with city.runtime.sessions() as session:
        newest = await session.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))
        changed = await write(session)
        states = (
            await session.execute(
                select(feeds_table.c.id, feeds_table.c.status, feeds_table.c.revision)
                .add_columns(feeds_table.c.last_seen)
                .where(feeds_table.c.id.in_(feed_ids))
                .order_by(feeds_table.c.id)
            )
        ).all()
        added = (
            await session.execute(
                select(
                    OutboxMessage.key,
                    OutboxMessage.payload,
                    OutboxMessage.messages,
                    OutboxMessage.codec,
                )
                .where(OutboxMessage.id > newest)
                .order_by(OutboxMessage.id)
            )
        ).all()
        await session.rollback()
    events = [
        {name: event[name] for name in ("type", "subject", "dataschema", "data")}
        for key, payload, count, codec in added
        for _, value in row_messages(key, payload, count, codec)
        for event in [orjson.loads(value)]
    ]
    rendered = [orjson.dumps(document, option=orjson.OPT_UTC_Z) for document in changed]
    return [tuple(state) for state in states], events, rendered


async def test_sqlite_statements_write_what_the_session_writes(
    client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the statement path is SQLite's; PostgreSQL writes through the session")
    city = await build_city(client)
    feeds = [await city.register(camera(TRANSPORT, serial)) for serial in range(1, 7)]
    ids = [feed["id"] for feed in feeds]
    retired = ids[5]
    assert (await client.delete(f"/v1/feeds/{retired}")).status_code in (200, 204)
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    later = seen + timedelta(seconds=10, microseconds=250_000)
    async with city.runtime.sessions() as session:  # feed 3 was seen after the batch's time
        await write_liveness(session, LivenessBatch(seen={ids[3]: later}))
    batch = LivenessBatch(
        statuses={
            ids[0]: "online",  # changes
            ids[1]: "unknown",  # as it is: no revision, no event
            ids[2]: "offline",  # changes, and has no sighting in the batch
            retired: "online",  # retired: left alone
            "no-such-feed": "online",
        },
        seen={ids[0]: seen, ids[1]: seen, ids[3]: seen, ids[4]: later, retired: seen},
    )
    dialect = city.runtime.engine.dialect
    monkeypatch.setattr(liveness, "PAIRS_PER_STATEMENT", 2)  # several statements per kind

    async def through_session(session: AsyncSession) -> Any:
        rows = await liveness.apply_liveness(session, batch=batch)
        return [event_data(row) for row in rows]

    async def as_statements(session: AsyncSession) -> Any:
        work = liveness.sqlite_liveness_work(batch, created_at=utcnow(), dialect=dialect)
        return await run_driver_work(session, work)

    async def foreseen(session: AsyncSession) -> Any:
        now = utcnow()
        ahead = await liveness.foresee_changes(session, batch, created_at=now, dialect=dialect)
        assert ahead.expected == {ids[0], ids[2]}
        work = liveness.sqlite_liveness_work(batch, created_at=now, dialect=dialect, foreseen=ahead)
        written = await run_driver_work(session, work)
        assert written is ahead.documents  # nothing changed meanwhile: nothing rendered again
        return written

    expected = await _liveness_outcome(city, ids, through_session)
    assert await _liveness_outcome(city, ids, foreseen) == expected  # rendered before the turn
    states, events, rendered = await _liveness_outcome(city, ids, as_statements)
    assert (states, events, rendered) == expected
    by_id = {state[0]: state for state in states}
    assert by_id[ids[0]][1:3] == ("online", feeds[0]["revision"] + 1)
    assert by_id[ids[2]][1:3] == ("offline", feeds[2]["revision"] + 1)
    assert by_id[ids[1]][1:3] == ("unknown", feeds[1]["revision"])
    assert [by_id[feed_id][3] for feed_id in (ids[0], ids[1], ids[3], ids[4])] == [
        seen, seen, later, later  # feed 3's later sighting stays
    ]  # fmt: skip
    assert by_id[retired][1:] == (
        "unknown", feeds[5]["revision"] + 1, None  # the retirement's revision, nothing more
    )  # fmt: skip
    assert [(event["subject"], event["data"]["status"]) for event in events] == [
        (ids[0], "online"),
        (ids[2], "offline"),
    ]


async def test_a_change_foreseen_before_an_edit_is_rendered_again_in_the_turn(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A feed edited between the read ahead of the writers' turn and the turn: the guarded
    UPDATE leaves it, the turn changes and renders it from the row as it is then (the new
    name in its event), and the other feeds' events are the same as the session path's."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the statement path is SQLite's; PostgreSQL writes through the session")
    city = await build_city(client)
    feeds = [await city.register(camera(TRANSPORT, serial)) for serial in range(1, 4)]
    ids = [feed["id"] for feed in feeds]
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    batch = LivenessBatch(
        statuses={ids[0]: "online", ids[1]: "online"}, seen={ids[0]: seen, ids[1]: seen}
    )
    dialect = city.runtime.engine.dialect
    now = utcnow()
    async with city.runtime.sessions() as session:
        ahead = await liveness.foresee_changes(session, batch, created_at=now, dialect=dialect)
    assert ahead.expected == {ids[0], ids[1]}
    edited = await client.patch(
        f"/v1/feeds/{ids[0]}",
        json={"name": "Renamed after the read"},
        headers={**city.as_(TRANSPORT), "If-Match": f'"{feeds[0]["version"]}"'},
    )
    assert edited.status_code == 200, edited.text

    async def through_session(session: AsyncSession) -> Any:
        return [event_data(row) for row in await liveness.apply_liveness(session, batch=batch)]

    async def with_foresight(session: AsyncSession) -> Any:
        work = liveness.sqlite_liveness_work(batch, created_at=now, dialect=dialect, foreseen=ahead)
        return await run_driver_work(session, work)

    expected = await _liveness_outcome(city, ids, through_session)
    states, events, rendered = await _liveness_outcome(city, ids, with_foresight)
    assert sorted(events, key=lambda event: event["subject"]) == sorted(
        expected[1], key=lambda event: event["subject"]
    )
    assert states == expected[0] and sorted(rendered) == sorted(expected[2])
    names = {event["subject"]: event["data"]["name"] for event in events}
    assert names[ids[0]] == "Renamed after the read"
    assert {event["data"]["status"] for event in events} == {"online"}


def _paused(loop: str) -> float:
    sample = REGISTRY.get_sample_value("feedgrid_background_paused_seconds_total", {"loop": loop})
    return sample or 0.0


async def test_the_applier_gives_way_to_requests_in_flight_and_still_applies(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    feed_id = (await city.register(camera(TRANSPORT, 1)))["id"]
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    applier = next(part for part in runtime.components if isinstance(part, LivenessApplier))

    before = _paused("liveness")
    with serving():  # a request of the process is being answered meanwhile
        assert await applier.apply([Liveness(feed_id, True, "online", None)]) == 1
    assert _paused("liveness") > before
    assert (await _feed(city, feed_id))["status"] == "online"

    paused = _paused("liveness")
    assert await applier.apply([Liveness(feed_id, True, "offline", None)]) == 1
    assert _paused("liveness") == paused  # nobody waiting: no pause
    assert (await _feed(city, feed_id))["status"] == "offline"
