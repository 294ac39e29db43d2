"""Listing and searching feeds over HTTP: every filter, near/sees/area, cursor pagination."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import numpy as np

from registry_api.feeds.geodesy import geodesic_distance_m
from schemas.feeds import FeedFilters
from tests.integration.feeds_support import (
    POLICE,
    TRANSPORT,
    URBAN,
    build_city,
    camera,
    eventually,
    gb_code,
    ids,
    liveness_event,
    offset,
    publish_feed_status,
    sensor,
)


def _square(west: float, south: float, east: float, north: float) -> dict[str, Any]:
    """A GeoJSON Polygon between metre offsets from the centre (counter-clockwise)."""
    corners = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    return {"type": "Polygon", "coordinates": [[offset(x, y) for x, y in corners]]}


async def _register_street(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """Seven feeds along an east-west street, each 100 m apart, with distinct attributes."""
    city = await build_city(client)
    bodies = {
        "checkpoint": camera(
            TRANSPORT, 1, at=offset(0, 0), code=gb_code(1, industry="05", type_code="121"),
            fov={"heading": 90.0, "angle": 40.0, "range_m": 150.0}, tags=["road", "checkpoint"],
        ),
        "dome": camera(
            POLICE, 2, at=offset(100, 0), code="62010300001321000002",
            fov={"heading": 0.0, "angle": 360.0, "range_m": 60.0}, tags=["square"],
            sharing={"class": "not_shared", "legal_basis": "Anti-terrorism law"},
        ),
        "north_cam": camera(
            URBAN, 3, at=offset(200, 0), code=gb_code(3, industry="08"),
            fov={"heading": 0.0, "angle": 30.0, "range_m": 80.0}, name="North gate camera",
        ),
        "blind": camera(URBAN, 4, at=offset(300, 0), code=gb_code(4, industry="08"), fov=None),
        "covered": camera(
            TRANSPORT, 5, at=offset(400, 0), fov=None,
            coverage=_square(380, -20, 420, 20),
        ),
        "air": sensor(POLICE, 6, at=offset(500, 0)),
        "far": camera(TRANSPORT, 7, at=offset(5_000, 3_000)),
    }  # fmt: skip
    return {name: await city.register(body) for name, body in bodies.items()}


async def _names(
    client: httpx.AsyncClient, feeds: dict[str, dict[str, Any]], **params: Any
) -> list[str]:
    response = await client.get("/v1/feeds", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    by_id = {feed["id"]: name for name, feed in feeds.items()}
    return [by_id[item["id"]] for item in response.json()["items"]]


async def test_each_list_filter_narrows_to_the_matching_feeds(client: httpx.AsyncClient) -> None:
    feeds = await _register_street(client)
    every = list(feeds)
    assert await _names(client, feeds) == every  # registration order
    assert await _names(client, feeds, department=URBAN) == ["north_cam", "blind"]
    assert await _names(client, feeds, kind="sensor") == ["air"]
    assert await _names(client, feeds, industry="08") == ["north_cam", "blind"]
    assert await _names(client, feeds, type_code="121") == ["checkpoint"]
    assert await _names(client, feeds, region="620103") == ["dome"]
    assert await _names(client, feeds, region="6201") == [n for n in every if n != "air"]
    assert await _names(client, feeds, sharing="not_shared") == ["dome"]
    assert await _names(client, feeds, sharing="conditional") == ["air"]
    assert await _names(client, feeds, status="unknown") == every
    assert await _names(client, feeds, status="online") == []
    assert await _names(client, feeds, tag="checkpoint") == ["checkpoint"]
    assert await _names(client, feeds, q="north GATE") == ["north_cam"]
    west, south = offset(-10, -10)
    east, north = offset(250, 10)
    assert await _names(client, feeds, bbox=f"{west},{south},{east},{north}") == [
        "checkpoint",
        "dome",
        "north_cam",
    ]
    assert await _names(client, feeds, department=TRANSPORT, kind="camera", tag="road") == [
        "checkpoint", "covered", "far",
    ]  # fmt: skip


async def test_near_gives_true_distances_nearest_first(client: httpx.AsyncClient) -> None:
    feeds = await _register_street(client)
    lon, lat = offset(260, 0)
    response = await client.get("/v1/feeds", params={"near": f"{lon},{lat},250"})
    items = response.json()["items"]
    expected = ["blind", "north_cam", "covered", "dome", "air"]  # 40, 60, 140, 160, 240 m away
    assert ids(items) == ids([feeds[name] for name in expected])
    for item in items:
        item_lon, item_lat = item["location"]["coordinates"]
        true_distance = geodesic_distance_m(lon, lat, np.array([item_lon]), np.array([item_lat]))[0]
        assert abs(item["distance_m"] - true_distance) < 0.01
    assert [round(item["distance_m"] / 10) * 10 for item in items] == [40, 60, 140, 160, 240]


async def test_sees_finds_the_cameras_whose_view_or_coverage_holds_the_point(
    client: httpx.AsyncClient,
) -> None:
    feeds = await _register_street(client)
    checks = [
        ((20, 5), {"checkpoint"}),  # in front of the checkpoint, looking east
        ((-60, 0), set()),  # behind it
        ((100, -50), {"dome"}),  # the dome sees all around
        ((210, 50), {"north_cam"}),
        ((210, -50), set()),  # the north camera does not look south
        ((405, 5), {"covered"}),  # explicit coverage polygon
        ((130, 10), {"checkpoint", "dome"}),
    ]
    for (east, north), expected in checks:
        lon, lat = offset(east, north)
        names = await _names(client, feeds, sees=f"{lon},{lat}")
        assert set(names) == expected, (east, north)


async def test_area_search_within_and_intersects(client: httpx.AsyncClient) -> None:
    feeds = await _register_street(client)
    area = _square(140, -30, 350, 120)
    within = await client.post("/v1/feeds/search", json={"geometry": area, "relation": "within"})
    assert within.status_code == 200, within.text
    assert ids(within.json()["items"]) == ids([feeds["north_cam"], feeds["blind"]])
    touching = await client.post(
        "/v1/feeds/search", json={"geometry": area, "relation": "intersects"}
    )
    # the checkpoint looks 150 m east, the dome 60 m around: both reach into the area
    assert ids(touching.json()["items"]) == ids(
        [feeds["checkpoint"], feeds["dome"], feeds["north_cam"], feeds["blind"]]
    )
    filtered = await client.post(
        "/v1/feeds/search", json={"geometry": area, "relation": "intersects", "department": POLICE}
    )
    assert ids(filtered.json()["items"]) == ids([feeds["dome"]])
    far_square = _square(4_900, 2_900, 5_100, 3_100)
    multi = {
        "type": "MultiPolygon",
        "coordinates": [area["coordinates"], far_square["coordinates"]],
    }
    both = await client.post("/v1/feeds/search", json={"geometry": multi, "relation": "within"})
    assert ids(both.json()["items"]) == ids([feeds["north_cam"], feeds["blind"], feeds["far"]])


async def test_cursor_pages_walk_every_match_once(client: httpx.AsyncClient) -> None:
    city = await build_city(client)
    created = []
    for serial in range(23):
        created.append(await city.register(camera(TRANSPORT, serial, at=offset(serial * 7.0, 0))))
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/feeds", params=params)).json()
        assert page["total"] == 23
        seen += ids(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids(created)
    lon, lat = offset(80, 0)
    near_seen: list[str] = []
    cursor = None
    while True:
        body: dict[str, Any] = {"near": [lon, lat, 1000], "limit": 4, "cursor": cursor}
        page = (await client.post("/v1/feeds/search", json=body)).json()
        near_seen += ids(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    by_distance = sorted(
        created, key=lambda feed: (abs(feed["location"]["coordinates"][0] - lon), feed["id"])
    )
    assert near_seen == ids(by_distance)


async def test_invalid_filters_are_422_with_the_reason(client: httpx.AsyncClient) -> None:
    await build_city(client)
    cases = {
        "near": "103.8,36.0",
        "bbox": "1,2,3",
        "sees": "200,10",
        "region": "62A",
        "industry": "4",
        "kind": "drone",
        "cursor": "garbage",
    }
    for name, value in cases.items():
        response = await client.get("/v1/feeds", params={name: value})
        assert response.status_code == 422, (name, response.text)
        assert set(response.json()) == {"code", "message", "details"}
    far = await client.get("/v1/feeds", params={"near": "103.8,36.0,50000"})
    assert far.status_code == 422 and "near" in far.json()["message"]
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    refused = await client.post("/v1/feeds/search", json={"geometry": bowtie})
    assert refused.status_code == 422 and "Self-intersection" in refused.text


async def test_the_filters_are_documented_as_the_query_parameters_they_are(
    client: httpx.AsyncClient,
) -> None:
    """``FeedFilters`` validates the query string once; the OpenAPI document still lists
    every filter with its constraints, and its examples are filters the API takes."""
    city = await build_city(client)
    await city.register(camera(TRANSPORT, 1))
    operation = (await client.get("/openapi.json")).json()["paths"]["/v1/feeds"]["get"]
    documented = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert set(documented) == set(FeedFilters.model_fields) | {"limit", "cursor"}
    assert all(parameter["in"] == "query" for parameter in documented.values())
    assert documented["kind"]["schema"]["anyOf"][0]["enum"] == ["camera", "sensor"]
    assert documented["region"]["schema"]["anyOf"][0]["pattern"] == r"^\d{2,8}$"
    for name in ("bbox", "near", "sees"):
        example = documented[name]["schema"]["examples"][0]
        answer = await client.get("/v1/feeds", params={name: example})
        assert answer.status_code == 200, (name, answer.text)
    # names that are no filter are left alone, as FastAPI's own parameters left them
    ignored = await client.get("/v1/feeds", params={"colour": "red", "limit": 1})
    assert ignored.status_code == 200 and len(ignored.json()["items"]) == 1


async def test_listed_documents_equal_the_single_feed_documents(client: httpx.AsyncClient) -> None:
    """Pages are read on a faster path than single feeds: they must render the same JSON."""
    city = await build_city(client)
    created = await city.register(camera(TRANSPORT, 1, altitude=None))
    # a worker saw it (feed-status): the registry keeps last_seen, in UTC
    seen = datetime.fromisoformat("2026-05-01T08:00:00.25+02:00")
    await publish_feed_status(
        city.runtime.settings,
        [(created["id"], liveness_event(created["id"], "online", changed=False, last_seen=seen))],
    )

    async def seen_shown() -> bool:
        return bool((await client.get(f"/v1/feeds/{created['id']}")).json()["last_seen"])

    await eventually(seen_shown)
    retired = await city.register(sensor(URBAN, 2))
    await client.delete(f"/v1/feeds/{retired['id']}")
    for feed in (created, retired):
        single = (await client.get(f"/v1/feeds/{feed['id']}")).json()
        listed = (await client.get("/v1/feeds", params={"include_retired": "true"})).json()
        (item,) = [item for item in listed["items"] if item["id"] == feed["id"]]
        assert item == single
    assert single["retired_at"].endswith("Z")
    heartbeat = (await client.get(f"/v1/feeds/{created['id']}")).json()
    assert heartbeat["last_seen"] == "2026-05-01T06:00:00.250000Z"
