"""`feedgrid up`'s demo load replays the seeded access traffic through the real HTTP API once.

A small generated city (a few hundred feeds, fifty requests) is loaded into a FeedGrid served
by uvicorn on a loopback port with the embedded worker, as `feedgrid up` runs it: SQLite, the
real Kafka broker and chdb. The requests, the owners' answers and the grants must be in the
registry as the replay reports them, the plays must reach the sharing matrix, and a second
load must do nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import uvicorn

from deploy.composition import build_app
from deploy.demo import load_demo_city_once
from deploy.demo_traffic import TrafficSummary, pair_key
from deploy.seed.writer import write_demo_city
from schemas.settings import Settings
from tests.integration.streams_support import ADMIN_TOKEN, close_analytics, make_settings

pytestmark = pytest.mark.kafka

CAMERAS = 300
SENSORS = 40
REQUESTS = 50
T = TypeVar("T")


@pytest.fixture
def demo_settings(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    sqlite_template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """`feedgrid up`'s configuration, with a small demo city already generated in var/demo."""
    monkeypatch.setenv("FEEDGRID_STREAM_FLUSH_SECONDS", "0.2")
    settings = make_settings(tmp_path, kafka_bootstrap, topic_prefix, sqlite_template)
    settings = settings.model_copy(update={"embedded_worker": True})
    write_demo_city(
        settings.var_dir / "demo",
        cameras=CAMERAS,
        sensors=SENSORS,
        requests=REQUESTS,
        progress=False,
    )
    yield settings
    close_analytics(settings)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The app behind uvicorn on a free loopback port, on this event loop (as `feedgrid up`)."""
    config = uvicorn.Config(
        build_app(settings), host="127.0.0.1", port=0, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    serve = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 120
    while not server.started and not serve.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.started, "the API did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serve, 60)


async def wait_for(
    check: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float
) -> T:
    """Polls ``check`` until ``done`` holds for its value or the deadline passes (last value)."""
    deadline = time.monotonic() + timeout
    value = await check()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        value = await check()
    return value


def _feeds_by_owner(request: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    owners: dict[str, list[dict[str, Any]]] = {}
    for feed in request["feeds"]:
        owners.setdefault(feed["owner_department"], []).append(feed)
    return owners


async def _check_registry(api: httpx.AsyncClient, summary: TrafficSummary) -> None:
    """Every replayed request is in the registry with its owners' answers and live grants."""
    outcomes: Counter[str] = Counter()
    grant_ids: set[str] = set()
    for replayed in summary.replayed:
        answer = await api.get(f"/v1/access-requests/{replayed.request_id}")
        assert answer.status_code == 200, answer.text
        request = answer.json()
        assert request["requester_department"] == replayed.requester_department
        assert request["emergency"] == replayed.emergency
        by_owner = _feeds_by_owner(request)
        for owner, verdict in replayed.owner_decisions.items():
            feeds = by_owner[owner]
            if verdict == "approved":
                decided = [feed for feed in feeds if feed["reason"] == "approved_by_owner"]
                assert decided, request
                assert all(feed["outcome"] == "granted" for feed in decided)
                assert all(feed["decided_by"] not in (None, "policy") for feed in decided)
                assert not any(feed["outcome"] == "pending" for feed in feeds), request
            elif verdict == "denied":
                refused = [feed for feed in feeds if feed["reason"] == "denied_by_owner"]
                assert refused, request
                assert all(feed["outcome"] == "denied" for feed in refused)
                assert not any(feed["outcome"] == "pending" for feed in feeds), request
            else:
                assert verdict == "left pending", verdict
                assert any(feed["outcome"] == "pending" for feed in feeds), request
        for feed in request["feeds"]:
            outcomes[feed["outcome"]] += 1
            if feed["outcome"] == "granted":
                assert feed["grant_id"], feed
                grant_ids.add(feed["grant_id"])
    assert outcomes == summary.feeds
    assert len(grant_ids) == summary.grants
    for grant_id in sorted(grant_ids):
        grant = await api.get(f"/v1/grants/{grant_id}")
        assert grant.status_code == 200, grant.text
        assert grant.json()["revoked_at"] is None


async def test_demo_load_replays_the_traffic_once_and_it_reaches_the_analytics(
    demo_settings: Settings,
) -> None:
    async with (
        serving(demo_settings) as base_url,
        httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        ) as api,
    ):
        began = time.perf_counter()
        # Two waves, as `feedgrid up` sends them: the week's first part is on its way while the
        # rest is replayed, and the two parts add up in the analytics.
        summary = await load_demo_city_once(
            demo_settings, base_url, ADMIN_TOKEN, progress=False, first_wave=REQUESTS // 4
        )
        replay_seconds = time.perf_counter() - began
        assert summary is not None
        assert summary.errors == 0
        assert summary.lines == summary.replayed_lines == REQUESTS
        assert summary.requests == len(summary.replayed) > REQUESTS // 2
        assert summary.requests + sum(summary.refused_by_api.values()) == REQUESTS
        assert summary.unresolved_codes == 0
        decided = summary.owner_decisions
        assert decided["approved"] > decided["denied"] > 0, decided
        assert summary.grants > 0 and summary.retrievals > 0 and summary.ended > 0
        assert summary.shared_token_plays >= 1
        assert set(summary.refused_plays) == {"missing_token", "token_for_another_feed"}
        assert summary.retrievals == sum(summary.retrievals_by_pair.values())
        assert replay_seconds < 60, replay_seconds

        await _check_registry(api, summary)

        # Two platforms answered with their catalogs: the tree is there, the feeds untouched.
        marker = next((demo_settings.var_dir / "demo").glob(".catalogs-*"))
        catalogs = orjson.loads(marker.read_bytes())
        assert set(catalogs) == {"lz-cmb", "lz-tb"}, catalogs
        for answer in catalogs.values():
            assert answer["channels"]["unchanged"] > 0 and answer["rejected"] == []
            assert answer["channels"]["created"] == answer["channels"]["updated"] == 0
        tree = (await api.get("/v1/catalog/tree")).json()
        assert {root["department"] for root in tree["roots"]} == {"lz-cmb", "lz-tb"}

        # The plays reach ClickHouse through outbox -> Kafka -> the embedded worker, and the
        # recorded week through the access-events topic, each at its own time.
        history = summary.history
        assert history is not None and history.retrievals > 0 and history.requests > 0
        assert history.start is not None and history.end is not None
        assert history.end - history.start > timedelta(days=5)
        assert history.end <= datetime.now(UTC)
        week = {"from": (datetime.now(UTC) - timedelta(days=8)).isoformat()}

        async def matrix() -> list[dict[str, Any]]:
            answer = await api.get("/v1/analytics/sharing-matrix", params=week)
            assert answer.status_code == 200, answer.text
            return answer.json()["rows"]  # type: ignore[no-any-return]

        def totals(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
            return (
                sum(row["retrievals"] for row in rows),
                sum(row["denied"] for row in rows),
                sum(row["bytes"] for row in rows),
            )

        # A play refused for want of a token names no department: no column of the matrix.
        attributed_refusals = summary.refused_plays["token_for_another_feed"]
        expected = (
            summary.retrievals + history.retrievals,
            attributed_refusals + history.attributed_denials,
            summary.bytes + history.bytes,
        )
        rows = await wait_for(matrix, lambda rows: totals(rows) == expected, timeout=90)
        assert totals(rows) == expected, (rows, summary.as_dict(), history.as_dict())
        assert all(row["requester_department"] for row in rows)
        played = {
            pair_key(row["owner_department"], row["requester_department"]): row["retrievals"]
            for row in rows
            if row["retrievals"]
        }
        assert played == dict(summary.retrievals_by_pair + history.retrievals_by_pair)
        # The week is spread over its days, not piled into the last hour.
        usage = await api.get("/v1/analytics/usage", params={**week, "granularity": "day"})
        days = {row["bucket"] for row in usage.json()["rows"] if row["retrievals"]}
        assert len(days) >= 5, usage.json()

        # The shared token shows up as an alert, as it would on the dashboard.
        async def shared_token_alerts() -> list[dict[str, Any]]:
            answer = await api.get("/v1/analytics/alerts", params={"rule": "token_multiple_ips"})
            assert answer.status_code == 200, answer.text
            return answer.json()["rows"]  # type: ignore[no-any-return]

        alerts = await wait_for(shared_token_alerts, bool, timeout=60)
        assert alerts, "no token_multiple_ips alert for the shared token"

        # A second start loads nothing and replays nothing.
        marker = next((demo_settings.var_dir / "demo").glob(".traffic-*"))
        recorded = orjson.loads(marker.read_bytes())
        assert recorded["state"] == "done" and recorded["requests"] == summary.requests
        listed = await api.get("/v1/access-requests", params={"limit": 200})
        assert listed.status_code == 200 and len(listed.json()) == summary.requests
        again = await load_demo_city_once(demo_settings, base_url, ADMIN_TOKEN, progress=False)
        assert again is None
        relisted = await api.get("/v1/access-requests", params={"limit": 200})
        assert len(relisted.json()) == summary.requests
        assert orjson.loads(marker.read_bytes()) == recorded
