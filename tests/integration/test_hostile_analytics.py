"""SQL-looking strings in every analytics parameter: refused, or a literal that matches nothing.

Parameters are enumerated from the OpenAPI, so a new analytics filter is attacked as soon as
it exists. ClickHouse is real (chdb, fed by the stream worker from Kafka as in
test_analytics.py); afterwards its tables, their row counts and every answer are as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from registry_api.app import create_app
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
    query,
    running_worker,
    wait_for_value,
)
from tests.topic_prefixes import new_topic_prefix

# One seeded store for the module: building it (Kafka, the worker, ClickHouse) is the slow part.
pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="module")]

OWNERS = ("lz-psb", "lz-jtj")
SQL_PAYLOADS = (
    "' OR '1'='1",
    "lz-psb' OR 1=1 --",
    "x'); DROP TABLE access_events; --",
    "1; DROP TABLE access_events",
    "lz-psb\\' UNION ALL SELECT name FROM system.tables --",
    "{department:String}",  # a ClickHouse query placeholder
    "' || sleep(3) || '",
    "0 OR 1=1",
    "2026-01-01' OR '1'='1",
    "1e999",
    # These pass the parameters' patterns: they must be taken as literals and match nothing.
    "lz-psb--1",
    "feed-0--",
    "drop_table_access_events",
    "99999999",
)


@pytest.fixture(scope="module")
def hostile_settings(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, sqlite_template: Path
) -> Iterator[Settings]:
    prefix = new_topic_prefix()
    settings = make_settings(
        tmp_path_factory.mktemp("hostile-analytics"), kafka_bootstrap, prefix, sqlite_template
    )
    yield settings
    close_analytics(settings)


async def seed_analytics(settings: Settings, now: datetime) -> None:
    """Two departments' feeds, grants, retrievals, a denial and heartbeats, through Kafka."""
    feeds = {
        f"feed-{index}": feed_document(f"feed-{index}", OWNERS[index % 2], serial=index + 1)
        for index in range(4)
    }
    events = []
    for index, feed_id in enumerate(feeds):
        requester = OWNERS[(index + 1) % 2]
        grant = f"g-{feed_id}"
        events.append(grant_issued(feed_id, grant, requester, now - timedelta(days=1), now))
        started = now - timedelta(minutes=30 + index)
        events += Retrieval(
            feed_id, requester, f"{requester}-u1", grant, started, 5.0, 1000
        ).events()
    events.append(
        access_event(
            "retrieval.denied",
            "feed-0",
            now - timedelta(minutes=5),
            requester_department="lz-jtj",
            decision="denied",
            reason="no_token",
        )
    )
    await produce(settings, FEED_TOPIC, [feed_event(document) for document in feeds.values()])
    await wait_for_value(settings, "SELECT uniqExact(feed_id) FROM feed_metadata", len(feeds))
    await produce(settings, ACCESS_TOPIC, events)
    await wait_for_value(settings, "SELECT count() FROM access_events", len(events))
    await produce(settings, HEARTBEAT_TOPIC, [heartbeat_event(feed_id, now) for feed_id in feeds])
    await wait_for_value(settings, "SELECT count() FROM feed_status FINAL", len(feeds))


@dataclass
class Callers:
    app: FastAPI
    clients: dict[str, httpx.AsyncClient]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def callers(hostile_settings: Settings) -> AsyncIterator[Callers]:
    """The city admin and a department's requester, on an app over the seeded store."""
    application = create_app(hostile_settings)
    now = datetime.now(UTC).replace(microsecond=0)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        admin = httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        )
        for code in OWNERS:
            created = await admin.post(
                "/v1/departments", json={"code": code, "name": code, "kind": "other"}
            )
            assert created.status_code == 201, created.text
        issued = await admin.post(
            "/v1/departments/lz-jtj/api-keys", json={"name": "t", "roles": ["requester"]}
        )
        department = httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"Authorization": f"Bearer {issued.json()['key']}"},
            timeout=60,
        )
        async with running_worker(hostile_settings, fast_tuning(heartbeat_silence_seconds=600)):
            await seed_analytics(hostile_settings, now)
            yield Callers(application, {"city admin": admin, "department": department})
        for client in (admin, department):
            await client.aclose()


def analytics_parameters(app: Any) -> dict[str, list[str]]:
    """Each analytics operation's query parameters, from the OpenAPI."""
    found = {}
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/v1/analytics/"):
            parameters = operations["get"].get("parameters", [])
            found[path] = [item["name"] for item in parameters if item["in"] == "query"]
    return found


def store_tables(settings: Settings) -> dict[str, int]:
    """Every table of the analytics store with its row count."""
    names = query(
        settings,
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine LIKE '%MergeTree%' ORDER BY name",
    )
    return {name: query(settings, f"SELECT count() FROM `{name}`")[0][0] for (name,) in names}


COUNTS = ("retrievals", "denied", "bytes", "requests")
FILTERS = {
    "owner_department", "requester_department", "feed_id", "kind", "region", "rule", "severity",
}  # fmt: skip


def holds_nothing(answer: dict[str, Any]) -> bool:
    """No row, or rows whose counts are all zero (a bucket or a department with no use)."""
    for row in answer.get("rows", []):
        counts = [row[key] for key in COUNTS if key in row]
        if not counts or any(counts):
            return False
    return True


async def answers(
    client: httpx.AsyncClient, operations: dict[str, list[str]], period: dict[str, str]
) -> dict[str, Any]:
    found = {}
    for path in operations:
        response = await client.get(path, params=period)
        assert response.status_code == 200, (path, response.text)
        found[path] = response.json()["rows"]
    return found


async def test_sql_in_every_analytics_parameter_is_refused_or_a_literal_and_harms_nothing(
    callers: Callers, hostile_settings: Settings
) -> None:
    operations = analytics_parameters(callers.app)
    assert len(operations) >= 7 and all(operations.values()), operations
    now = datetime.now(UTC)
    period = {
        "from": (now - timedelta(days=2)).isoformat(),
        "to": (now + timedelta(hours=1)).isoformat(),
    }
    tables_before = await asyncio.to_thread(store_tables, hostile_settings)
    assert tables_before.get("access_events", 0) > 0, tables_before
    answers_before = {
        label: await answers(client, operations, period)
        for label, client in callers.clients.items()
    }
    assert any(answers_before["city admin"].values()), "the seeded store answers nothing"

    failures = []
    sent = 0
    for label, client in callers.clients.items():
        for path, names in operations.items():
            for name in names:
                for payload in SQL_PAYLOADS:
                    response = await client.get(path, params={name: payload})
                    sent += 1
                    where = f"{label} {path}?{name}={payload!r}"
                    if response.status_code == 200:
                        # A filter must match nothing; other parameters (a number read as a
                        # time, say) may answer, but never a 5xx.
                        if name in FILTERS and not holds_nothing(response.json()):
                            failures.append(f"{where}: 200 with rows {response.text[:200]}")
                    elif response.status_code != 422:
                        failures.append(f"{where}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert sent >= 2 * 7 * 2 * len(SQL_PAYLOADS)

    assert await asyncio.to_thread(store_tables, hostile_settings) == tables_before
    answers_after = {
        label: await answers(client, operations, period)
        for label, client in callers.clients.items()
    }
    assert answers_after == answers_before


async def test_a_filter_an_answer_cannot_apply_is_refused_not_ignored(callers: Callers) -> None:
    """The sharing matrix has no feeds, alerts and decisions no kinds or regions: filtering
    them by those was silently ignored, answering every row as if it matched."""
    admin = callers.clients["city admin"]
    for path, name, value in (
        ("/v1/analytics/sharing-matrix", "feed_id", "feed-0"),
        ("/v1/analytics/alerts", "kind", "camera"),
        ("/v1/analytics/alerts", "region", "620102"),
        ("/v1/analytics/decisions", "feed_id", "feed-0"),
        ("/v1/analytics/decisions", "kind", "sensor"),
        ("/v1/analytics/decisions", "region", "620103"),
    ):
        response = await admin.get(path, params={name: value})
        assert response.status_code == 422, (path, name, response.text)
        assert response.json()["code"] == "unsupported_filter"
    # The filters each answer does apply still work.
    matrix = await admin.get("/v1/analytics/sharing-matrix", params={"owner_department": "lz-psb"})
    assert matrix.status_code == 200 and matrix.json()["rows"]
    assert {row["owner_department"] for row in matrix.json()["rows"]} == {"lz-psb"}
