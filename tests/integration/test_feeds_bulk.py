"""Bulk upsert by (owner, code): NDJSON, FeatureCollections, per-feature rejects, demo city."""

from __future__ import annotations

import copy

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from deploy.seed.departments import departments
from deploy.seed.feeds import generate_feeds
from registry_api.db import SQLITE_AUTOCHECKPOINT_PAGES
from registry_api.feeds.bulk import checkpoint_deferred
from schemas.topics import FEED_METADATA
from tests.integration.feeds_support import (
    POLICE,
    TRANSPORT,
    URBAN,
    as_feature,
    build_city,
    camera,
    feed_count,
    outbox_messages,
    sensor,
)

NDJSON = {"Content-Type": "application/x-ndjson"}


def _ndjson(features: list[dict]) -> bytes:
    return b"\n".join(orjson.dumps(feature) for feature in features) + b"\n"


async def test_bulk_upsert_creates_then_updates_then_leaves_unchanged(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    features = [as_feature(camera(TRANSPORT, serial)) for serial in range(5)]
    features.append(as_feature(sensor(TRANSPORT, 9)))
    first = await client.post("/v1/feeds/bulk", content=_ndjson(features), headers=NDJSON)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "created": 6,
        "updated": 0,
        "unchanged": 0,
        "rejected": [],
        "flagged": [],
    }
    assert await outbox_messages(city.runtime, FEED_METADATA) == 6

    features[1]["properties"]["name"] = "Renamed by the second import"
    collection = {"type": "FeatureCollection", "features": features}
    second = await client.post("/v1/feeds/bulk", json=collection)
    assert second.json() == {
        "created": 0,
        "updated": 1,
        "unchanged": 5,
        "rejected": [],
        "flagged": [],
    }
    assert await outbox_messages(city.runtime, FEED_METADATA) == 7
    listed = (await client.get("/v1/feeds", params={"q": "renamed"})).json()["items"]
    assert (
        len(listed) == 1
        and listed[0]["version"] == 2
        and listed[0]["code"] == features[1]["properties"]["code"]
    )
    assert (await client.get("/v1/feeds")).json()["total"] == 6

    retired_id = listed[0]["id"]
    await client.delete(f"/v1/feeds/{retired_id}")
    third = await client.post("/v1/feeds/bulk", json=collection)
    assert third.json()["updated"] == 1  # registered again: the retired feed comes back
    revived = (await client.get(f"/v1/feeds/{retired_id}")).json()
    assert revived["retired"] is False and revived["version"] == 4


async def _pooled_autocheckpoints(engine: AsyncEngine) -> list[int]:
    """``PRAGMA wal_autocheckpoint`` of every connection the pool keeps, all held at once."""
    pooled = engine.sync_engine.pool.checkedin()  # type: ignore[attr-defined]
    connections = [await engine.connect() for _ in range(pooled)]
    try:
        return [
            int((await c.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar_one())
            for c in connections
        ]
    finally:
        for connection in connections:
            await connection.close()


async def test_an_import_leaves_the_pool_checkpointing_as_before(engine: AsyncEngine) -> None:
    """An import commits with the commit-time checkpoint off; its connection goes back to the
    pool with the registry's threshold, not SQLite's default of 1,000 pages."""
    if engine.dialect.name != "sqlite":
        pytest.skip("a write-ahead log of SQLite's")
    async with AsyncSession(engine) as session:
        async with checkpoint_deferred(session):
            off = await session.execute(text("PRAGMA wal_autocheckpoint"))
            assert off.scalar_one() == 0
            await session.execute(text("CREATE TABLE imported (id INTEGER PRIMARY KEY)"))
            await session.commit()
    thresholds = await _pooled_autocheckpoints(engine)
    assert thresholds and set(thresholds) == {SQLITE_AUTOCHECKPOINT_PAGES}


async def test_bad_features_are_rejected_one_by_one_without_sinking_the_batch(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    good = [as_feature(camera(TRANSPORT, serial)) for serial in range(4)]
    bad_code = as_feature(camera(TRANSPORT, 10, code="1234"))
    bad_angle = as_feature(camera(TRANSPORT, 11))
    bad_angle["properties"]["fov"]["angle"] = 400
    unknown_owner = as_feature(camera("lz-nowhere", 12))
    other_department = as_feature(camera(POLICE, 13))
    twice = copy.deepcopy(good[0])
    lines = [
        orjson.dumps(good[0]),
        orjson.dumps(bad_code),
        b'{"type": "Feature", "geometry": ',  # broken JSON
        orjson.dumps(good[1]),
        orjson.dumps(bad_angle),
        orjson.dumps(unknown_owner),
        orjson.dumps(other_department),
        orjson.dumps(twice),
        orjson.dumps(good[2]),
        orjson.dumps(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [500, 0]},
                "properties": good[3]["properties"],
            }
        ),
    ]
    response = await client.post(
        "/v1/feeds/bulk", content=b"\n".join(lines), headers={**NDJSON, **city.as_(TRANSPORT)}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["created"] == 3
    rejected = {reject["index"]: reject for reject in result["rejected"]}
    assert sorted(rejected) == [1, 2, 4, 5, 6, 7, 9]
    assert "GB/T 28181" in rejected[1]["message"] and rejected[1]["code"] == "1234"
    assert "not JSON" in rejected[2]["message"]
    assert "fov.angle" in rejected[4]["message"]
    assert "does not exist" in rejected[5]["message"]
    assert POLICE in rejected[6]["message"]
    assert "earlier in this batch" in rejected[7]["message"]
    assert "longitude" in rejected[9]["message"]
    assert await feed_count(city.runtime) == 3
    assert await outbox_messages(city.runtime, FEED_METADATA) == 3


async def test_a_code_held_by_another_department_is_stored_and_flagged(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    original = await city.register(camera(POLICE, 1))
    batch = [
        as_feature(camera(TRANSPORT, 1)),
        as_feature(camera(TRANSPORT, 2)),
        as_feature(camera(URBAN, 2)),
    ]
    response = await client.post("/v1/feeds/bulk", content=_ndjson(batch), headers=NDJSON)
    result = response.json()
    assert result["created"] == 3 and result["rejected"] == []
    flags = {(flag["index"], flag["code"]): flag["duplicates"] for flag in result["flagged"]}
    assert flags[(0, original["code"])] == [
        {"feed_id": original["id"], "owner": POLICE, "reasons": ["same_code"]}
    ]
    assert [d["owner"] for d in flags[(1, batch[1]["properties"]["code"])]] == [URBAN]
    assert [d["owner"] for d in flags[(2, batch[1]["properties"]["code"])]] == [TRANSPORT]
    assert await feed_count(city.runtime) == 4


async def test_bulk_bodies_that_are_not_features_are_422(client: httpx.AsyncClient) -> None:
    await build_city(client)
    for body, content_type in (
        (b"", "application/json"),
        (b'{"type": "Point", "coordinates": [1, 2]}', "application/json"),
        (b'{"type": "FeatureCollection", "features": 3}', "application/geo+json"),
        (b"[1, 2", "application/json"),
    ):
        response = await client.post(
            "/v1/feeds/bulk", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 422, body
        assert set(response.json()) == {"code", "message", "details"}


async def test_the_demo_city_imports_in_one_call(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """57,000 cameras and 3,000 sensors on SQLite; a 3,000-feature slice on PostgreSQL."""
    cameras, sensors = (57_000, 3_000) if database_url.startswith("sqlite") else (2_700, 300)
    for department in departments():
        created = await client.post("/v1/departments", json=department)
        assert created.status_code == 201
    generated = generate_feeds(cameras=cameras, sensors=sensors)
    response = await client.post(
        "/v1/feeds/bulk", content=_ndjson(generated.features), headers=NDJSON
    )
    assert response.status_code == 200, response.text[:2000]
    result = response.json()
    assert result["rejected"] == []
    assert result["created"] == cameras + sensors
    same_code = {d["duplicate"]["code"] for d in generated.duplicates if d["kind"] == "same_code"}
    assert same_code <= {flag["code"] for flag in result["flagged"]}
    listed = (await client.get("/v1/feeds", params={"limit": 1})).json()
    assert listed["total"] == cameras + sensors
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert len(runtime.feed_index) == cameras + sensors


async def test_a_large_import_checked_by_the_helper_process_rejects_the_same_way(
    client: httpx.AsyncClient,
) -> None:
    """Above HELPER_MIN_FEATURES the features are checked in the helper process."""
    from registry_api.feeds.bulk import HELPER_MIN_FEATURES

    for department in departments():
        assert (await client.post("/v1/departments", json=department)).status_code == 201
    features = generate_feeds(cameras=HELPER_MIN_FEATURES + 500, sensors=0, seed=5).features
    lines = [orjson.dumps(feature) for feature in features]
    lines[10] = b'{"type": "Feature"'  # broken JSON
    bad_code = orjson.loads(lines[5_000])
    bad_code["properties"]["code"] = "6201"
    lines[5_000] = orjson.dumps(bad_code)
    lines[-1] = lines[0]  # the same owner and code again
    response = await client.post("/v1/feeds/bulk", content=b"\n".join(lines), headers=NDJSON)
    result = response.json()
    assert [reject["index"] for reject in result["rejected"]] == [10, 5_000, len(lines) - 1]
    assert "not JSON" in result["rejected"][0]["message"]
    assert "GB/T 28181" in result["rejected"][1]["message"]
    assert "index 0" in result["rejected"][2]["message"]
    assert result["created"] == len(lines) - 3
    assert (await client.get("/v1/feeds", params={"limit": 1})).json()["total"] == len(lines) - 3
