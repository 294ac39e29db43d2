"""The whole embedded path: API writes -> outbox relay -> Kafka -> embedded agents -> ClickHouse,
and liveness found by the agents back in the registry.

One FeedGrid app with ``embedded_worker=True`` (the ``feedgrid up`` configuration) on SQLite,
the real broker and chdb; a department registers a camera, another gets a grant, a media
server's hooks report a retrieval, a gateway reports heartbeats and then falls silent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from deploy.composition import build_app
from schemas.settings import Settings
from tests.integration.streams_support import (
    ADMIN_TOKEN,
    close_analytics,
    gb_code,
    make_settings,
    query,
    wait_for_value,
)

pytestmark = pytest.mark.kafka

SILENCE_SECONDS = 4


@pytest.fixture
def embedded_settings(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    sqlite_template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    monkeypatch.setenv("FEEDGRID_STREAM_FLUSH_SECONDS", "0.2")
    monkeypatch.setenv("FEEDGRID_STREAM_HEARTBEAT_SILENCE_SECONDS", str(SILENCE_SECONDS))
    monkeypatch.setenv("FEEDGRID_STREAM_LIVENESS_SCAN_SECONDS", "0.5")
    settings = make_settings(tmp_path, kafka_bootstrap, topic_prefix, sqlite_template)
    settings = settings.model_copy(update={"embedded_worker": True})
    yield settings
    close_analytics(settings)


@pytest.fixture
async def api(embedded_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = build_app(embedded_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://feedgrid.test",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        ) as http:
            yield http


async def _key(api: httpx.AsyncClient, department: str, roles: list[str]) -> dict[str, str]:
    issued = await api.post(
        f"/v1/departments/{department}/api-keys", json={"name": "t", "roles": roles}
    )
    assert issued.status_code == 201, issued.text
    return {"Authorization": f"Bearer {issued.json()['key']}"}


async def _wait_for(check: object, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await check()  # type: ignore[operator]
        if value:
            return value
        await asyncio.sleep(0.25)
    return value


async def test_api_events_arrive_enriched_and_silence_reaches_the_registry(
    api: httpx.AsyncClient, embedded_settings: Settings
) -> None:
    for code in ("lz-psb", "lz-jtj"):
        created = await api.post(
            "/v1/departments", json={"code": code, "name": code, "kind": "other"}
        )
        assert created.status_code == 201, created.text
    police = await _key(api, "lz-psb", ["dept_admin", "gateway"])
    transport = await _key(api, "lz-jtj", ["requester"])
    code = gb_code(42, industry="00", region="62010200")
    registered = await api.post(
        "/v1/feeds",
        headers=police,
        json={
            "kind": "camera",
            "code": code,
            "owner": "lz-psb",
            "name": "Zhongshan Bridge north",
            "location": {"type": "Point", "coordinates": [103.82, 36.07]},
            "stream": {
                "protocol": "rtsp",
                "url": "rtsp://10.0.0.5/cam42",
                "media_path": f"lz-psb/{code}",
            },
            "sharing": {"class": "unconditional"},
        },
    )
    assert registered.status_code == 201, registered.text
    feed_id = registered.json()["id"]

    requested = await api.post(
        "/v1/access-requests",
        headers=transport,
        json={"feed_ids": [feed_id], "purpose": "traffic management", "actions": ["live"]},
    )
    assert requested.status_code == 201, requested.text
    grant_id = requested.json()["feeds"][0]["grant_id"]
    retrieval = await api.get(f"/v1/grants/{grant_id}/retrieval", headers=transport)
    assert retrieval.status_code == 200, retrieval.text
    token = retrieval.json()["feeds"][0]["token"]
    app_name, stream_name = retrieval.json()["feeds"][0]["media_path"].split("/", 1)
    hook = {
        "app": app_name,
        "stream": stream_name,
        "params": f"token={token}",
        "ip": "10.3.0.9",
        "id": "s-1",
    }
    played = await api.post(
        "/v1/hooks/zlmediakit/on_play", headers=police, json={**hook, "schema": "rtsp"}
    )
    assert played.json()["code"] == 0, played.text
    reported = await api.post(
        "/v1/hooks/zlmediakit/on_flow_report",
        headers=police,
        json={**hook, "totalBytes": 7_654_321, "duration": 42.0, "player": True},
    )
    assert reported.status_code == 200

    settings = embedded_settings
    await wait_for_value(
        settings,
        "SELECT count() FROM access_events WHERE type IN ('retrieval.started', 'retrieval.ended')",
        2,
    )
    rows = query(
        settings,
        "SELECT type, owner_department, requester_department, kind, region, industry, "
        "sharing_class, bytes FROM access_events WHERE feed_id = {feed:String} ORDER BY time, type",
        {"feed": feed_id},
    )
    by_type = {row[0]: row[1:] for row in rows}
    assert by_type["retrieval.started"][:6] == (
        "lz-psb",
        "lz-jtj",
        "camera",
        "620102",
        "00",
        "unconditional",
    )
    assert by_type["retrieval.ended"][6] == 7_654_321
    assert "grant.issued" in by_type
    # the feed's rows come by the batch path too, maybe in a batch of their own
    await wait_for_value(settings, "SELECT count() FROM feed_metadata FINAL", 1)
    assert query(settings, "SELECT feed_id, owner_department FROM feed_metadata FINAL") == [
        (feed_id, "lz-psb")
    ]
    usage = await api.get("/v1/analytics/usage", headers=transport, params={"group_by": "feed"})
    assert [(row["group"], row["retrievals"], row["bytes"]) for row in usage.json()["rows"]] == [
        (feed_id, 1, 7_654_321)
    ]

    beat = await api.post("/v1/heartbeats", headers=police, json={"items": [{"feed_id": feed_id}]})
    assert beat.status_code == 200, beat.text

    async def registry_status() -> str | None:
        status = (await api.get(f"/v1/feeds/{feed_id}")).json()["status"]
        return status if status == "offline" else None

    assert await _wait_for(registry_status, timeout=SILENCE_SECONDS + 20) == "offline"
    transitions = query(
        settings,
        "SELECT status, reason FROM feed_status FINAL WHERE feed_id = {feed:String} "
        "ORDER BY changed_at",
        {"feed": feed_id},
    )
    assert transitions == [("online", "heartbeat"), ("offline", "silence")]
    await wait_for_value(
        settings,
        "SELECT argMax(status, version) FROM feed_metadata WHERE feed_id = {feed:String}",
        "offline",
        parameters={"feed": feed_id},
    )
    alerts = await api.get("/v1/analytics/alerts", params={"rule": "feed_offline_while_granted"})
    assert [row["grant_id"] for row in alerts.json()["rows"]] == [grant_id]
