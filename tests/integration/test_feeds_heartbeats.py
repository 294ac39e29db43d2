"""Liveness from gateways: status and last_seen follow the newest report; events on both topics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from schemas.settings import Settings
from schemas.topics import FEED_METADATA, HEARTBEATS
from tests.integration.feeds_support import (
    POLICE,
    TRANSPORT,
    build_city,
    camera,
    read_topic,
    wait_until_sent,
)


async def test_heartbeats_drive_status_and_are_published(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    city = await build_city(client)
    first = await city.register(camera(TRANSPORT, 1))
    second = await city.register(camera(TRANSPORT, 2))
    gateway = city.as_(TRANSPORT, "gateway")
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    batch = {
        "reporter": "gateway-7",
        "items": [
            {"feed_id": first["id"], "status": "online", "seen_at": seen.isoformat()},
            {"feed_id": second["id"], "status": "offline", "seen_at": seen.isoformat()},
            {
                "feed_id": first["id"],
                "status": "offline",
                "seen_at": (seen - timedelta(minutes=5)).isoformat(),
            },
        ],
    }
    response = await client.post("/v1/heartbeats", json=batch, headers=gateway)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3, "status_changed": 2, "rejected": []}
    now_first = (await client.get(f"/v1/feeds/{first['id']}")).json()
    assert now_first["status"] == "online"  # the older "offline" report does not win
    assert datetime.fromisoformat(now_first["last_seen"]) == seen
    assert now_first["version"] == 1 and now_first["revision"] == 2  # editors' If-Match stays valid
    online = (await client.get("/v1/feeds", params={"status": "online"})).json()["items"]
    assert [item["id"] for item in online] == [first["id"]]
    offline = (await client.get("/v1/feeds", params={"status": "offline"})).json()["items"]
    assert [item["id"] for item in offline] == [second["id"]]

    again = await client.post(
        "/v1/heartbeats", json={"items": [{"feed_id": first["id"]}]}, headers=gateway
    )
    assert again.json() == {"accepted": 1, "status_changed": 0, "rejected": []}

    await wait_until_sent(city.runtime)
    beats = await read_topic(settings.kafka_bootstrap, settings.topic_prefix, HEARTBEATS, until=4)
    assert len({str(event.id) for _, event in beats}) == 4
    for key, event in beats:
        assert event.type == "feedgrid.heartbeat" and event.subject == key
        assert event.data["reporter"] in ("gateway-7", None) or event.data["reporter"].startswith(
            "key:"
        )
    statuses = await read_topic(
        settings.kafka_bootstrap, settings.topic_prefix, FEED_METADATA, until=4
    )
    status_events = [event for _, event in statuses if event.type == "feedgrid.feed.status"]
    assert {(event.subject, event.data["status"]) for event in status_events} == {
        (first["id"], "online"),
        (second["id"], "offline"),
    }


async def test_heartbeats_for_foreign_unknown_retired_or_future_feeds_are_rejected(
    client: httpx.AsyncClient,
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
        ]
    }
    response = await client.post(
        "/v1/heartbeats", json=batch, headers=city.as_(TRANSPORT, "gateway")
    )
    result = response.json()
    assert result["accepted"] == 1 and result["status_changed"] == 1
    reasons = {reject["index"]: reject["message"] for reject in result["rejected"]}
    assert set(reasons) == {1, 2, 3, 4}
    assert POLICE in reasons[1] and "no such feed" in reasons[2]
    assert "retired" in reasons[3] and "future" in reasons[4]
    assert (await client.get(f"/v1/feeds/{foreign['id']}")).json()["status"] == "unknown"
    for role in ("requester", "dept_admin"):
        refused = await client.post("/v1/heartbeats", json=batch, headers=city.as_(TRANSPORT, role))
        assert refused.status_code == 403
    malformed = await client.post(
        "/v1/heartbeats", json={"items": [{"feed_id": own["id"], "status": "asleep"}]},
        headers=city.as_(TRANSPORT, "gateway"),
    )  # fmt: skip
    assert malformed.status_code == 422
