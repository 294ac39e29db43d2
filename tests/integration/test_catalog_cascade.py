"""Shared catalogs out (cascade to the province) and duplicates decided.

The round trip runs two FeedGrid apps: the city's, and a second one with its own registry
database and its own topic prefix on the same Kafka broker, playing the provincial registry.
The province pulls the city's shared catalog page by page as MANSCDP and posts the pages to its
own catalog endpoint: it must see exactly the channels the city's sharing rules give it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.catalog_samples import BRIDGE_AREA, BUSINESS_GROUP, DISTRICT, sample_catalog
from deploy.catalog_samples import channel_code as code
from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.catalog_support import applied, feeds_of
from tests.integration.feeds_support import POLICE, TRANSPORT, URBAN, build_city, camera
from tests.topic_prefixes import new_topic_prefix

pytestmark = [pytest.mark.kafka, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
PROVINCE = "gs-province"
CITY = "lz-city"


async def _department(client: httpx.AsyncClient, code_: str, name: str) -> str:
    """Creates a department with a key of every role; returns its gateway key."""
    created = await client.post(
        "/v1/departments", json={"code": code_, "name": name, "kind": "other"}
    )
    assert created.status_code == 201, created.text
    issued = await client.post(
        f"/v1/departments/{code_}/api-keys",
        json={"name": "platform", "roles": ["gateway", "requester", "dept_admin"]},
    )
    assert issued.status_code == 201, issued.text
    return str(issued.json()["key"])


async def _share(client: httpx.AsyncClient, feed: dict[str, Any], sharing: dict[str, Any]) -> None:
    changed = await client.patch(
        f"/v1/feeds/{feed['id']}",
        json={"sharing": sharing},
        headers={"If-Match": str(feed["version"])},
    )
    assert changed.status_code == 200, changed.text


async def test_the_province_imports_exactly_the_channels_shared_with_it(
    client: httpx.AsyncClient, settings: Settings, sqlite_template: Path, tmp_path: Path
) -> None:
    city = await build_city(client)
    province_key = await _department(client, PROVINCE, "Gansu provincial video platform")
    await applied(client, sample_catalog(), city.as_(URBAN, "gateway"))
    urban = await feeds_of(client, department=URBAN)
    # channel 2 is shared with the province by condition, channel 3 with the police only;
    # channel 5 is classified (not shared); channel 4 has no position
    await _share(
        client, urban[code(2)], {"class": "conditional", "conditions": {"departments": [PROVINCE]}}
    )
    await _share(
        client, urban[code(3)], {"class": "conditional", "conditions": {"departments": [POLICE]}}
    )
    manual = await city.register(camera(TRANSPORT, 7), TRANSPORT)  # a manual entry, no tree
    await city.register(
        camera(TRANSPORT, 8, sharing={"class": "not_shared", "legal_basis": "traffic law"}),
        TRANSPORT,
    )
    expected = {code(1), code(2), code(4), manual["code"]}

    as_province = {"Authorization": f"Bearer {province_key}"}
    geojson = await client.get(
        "/v1/catalog/shared",
        params={"platform": PROVINCE, "format": "geojson", "page_size": 100},
        headers=as_province,
    )
    assert geojson.status_code == 200, geojson.text
    features = geojson.json()["features"]
    channels = {f["id"]: f for f in features if f["properties"]["kind"] == "channel"}
    assert set(channels) == expected
    assert channels[code(4)]["geometry"] is None  # unplaced: shared, but on no map
    assert channels[code(1)]["properties"]["Name"] == "中山桥南端球机"
    assert {f["id"] for f in features if f["properties"]["kind"] == "node"} == {
        BUSINESS_GROUP, DISTRICT, BRIDGE_AREA,
    }  # fmt: skip
    # the province may not pull what is shared with someone else
    other = await client.get("/v1/catalog/shared", params={"platform": POLICE}, headers=as_province)
    assert other.status_code == 403

    pages = []
    first = await client.get(
        "/v1/catalog/shared",
        params={"platform": PROVINCE, "page_size": 3, "sn": "901"},
        headers=as_province,
    )
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].lower().startswith("application/manscdp+xml")
    assert first.headers["x-catalog-sum-num"] == "7" and first.headers["x-catalog-pages"] == "3"
    pages.append(first.content)
    for page in (2, 3):
        response = await client.get(
            "/v1/catalog/shared",
            params={"platform": PROVINCE, "page_size": 3, "sn": "901", "page": page},
            headers=as_province,
        )
        pages.append(response.content)
    assert "中山桥南端球机".encode("gb18030") in b"".join(pages)

    province_db = tmp_path / "province.db"
    shutil.copy(sqlite_template, province_db)
    province_settings = settings.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{province_db}",
            "topic_prefix": new_topic_prefix(),
            "clickhouse_url": f"chdb://{tmp_path / 'province-analytics'}",
            "var_dir": tmp_path / "province-var",
            "signing_key_dir": tmp_path / "province-keys",
        }
    )
    async with running_client(province_settings) as province:
        city_gateway = {"Authorization": f"Bearer {await _department(province, CITY, 'Lanzhou')}"}
        states = [(await applied(province, body, city_gateway))["state"] for body in pages]
        assert states == ["waiting", "waiting", "applied"]
        seen = await feeds_of(province, department=CITY)
        assert set(seen) == expected  # exactly the shared channels, no more
        assert seen[code(1)]["name"] == "中山桥南端球机"
        assert seen[code(4)]["location"] is None
        tree = (await province.get("/v1/catalog/tree", params={"department": CITY})).json()
        names = [node["name"] for node in _walk(tree["roots"])]
        assert {"兰州市城市管理视频资源", "城关区", "中山桥片区"} <= set(names)
        beneath = await feeds_of(province, catalog_node=DISTRICT)
        assert set(beneath) == {code(1), code(2), code(4)}


def _walk(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for node in nodes:
        found.append(node)
        found += _walk(node["children"])
    return found


async def test_duplicates_are_resolved_or_dismissed_by_their_owners(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    await applied(client, sample_catalog(), city.as_(URBAN, "gateway"))
    # the police NVR reports two of the same channels: one code, two departments
    police_catalog = sample_catalog().replace(b"62010000082002000001", b"62010000002002000001", 1)
    await applied(client, police_catalog, city.as_(POLICE, "gateway"))
    listed = (await client.get("/v1/catalog/duplicates", params={"reason": "same_code"})).json()
    groups = {group["evidence"]["code"]: group for group in listed["groups"]}
    assert len(groups) == 5
    first, second = groups[code(1)], groups[code(2)]

    outsider = await client.post(
        f"/v1/catalog/duplicates/{first['key']}/resolve",
        json={"authoritative_feed_id": first["feeds"][0]["id"]},
        headers=city.as_(TRANSPORT, "dept_admin"),
    )
    assert outsider.status_code == 403  # not one of the group's departments
    stranger = await client.post(
        f"/v1/catalog/duplicates/{first['key']}/resolve",
        json={"authoritative_feed_id": second["feeds"][0]["id"]},
        headers=city.as_(URBAN, "dept_admin"),
    )
    assert stranger.status_code == 422  # the authoritative feed must be one of the group
    urban_feed = next(member["id"] for member in first["feeds"] if member["owner"] == URBAN)
    resolved = await client.post(
        f"/v1/catalog/duplicates/{first['key']}/resolve",
        json={"authoritative_feed_id": urban_feed, "note": "the urban NVR is the source"},
        headers=city.as_(URBAN, "dept_admin"),
    )
    assert resolved.status_code == 201, resolved.text
    assert resolved.json()["decided_department"] == URBAN
    dismissed = await client.post(
        f"/v1/catalog/duplicates/{second['key']}/dismiss",
        json={"note": "two cameras on one pole"},
        headers=city.as_(POLICE, "dept_admin"),
    )
    assert dismissed.status_code == 201, dismissed.text
    again = await client.post(
        f"/v1/catalog/duplicates/{second['key']}/dismiss", headers=city.as_(POLICE, "dept_admin")
    )
    assert again.status_code == 409

    after = (await client.get("/v1/catalog/duplicates", params={"reason": "same_code"})).json()
    assert {group["key"] for group in after["groups"]} == {
        group["key"] for group in groups.values()
    } - {first["key"], second["key"]}
    everything = await client.get(
        "/v1/catalog/duplicates", params={"reason": "same_code", "include_decided": "true"}
    )
    assert len(everything.json()["groups"]) == 5
    # the audit trail: who decided what, seen by the departments concerned
    trail = (
        await client.get("/v1/catalog/duplicates/decisions", headers=city.as_(URBAN, "dept_admin"))
    ).json()
    assert [(item["decision"], item["decided_by"] != "") for item in trail["items"]] == [
        ("dismissed", True), ("resolved", True),
    ]  # fmt: skip
    assert trail["items"][1]["authoritative_feed_id"] == urban_feed
    hidden = await client.get(
        "/v1/catalog/duplicates/decisions", headers=city.as_(TRANSPORT, "dept_admin")
    )
    assert hidden.json()["items"] == []
