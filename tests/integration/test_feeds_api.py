"""The feed registry's CRUD endpoints, on SQLite and PostgreSQL (the ``client`` fixture)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from schemas.feeds import FeedOut
from schemas.settings import Settings
from schemas.topics import FEED_METADATA
from tests.integration.feeds_support import (
    POLICE,
    TRANSPORT,
    URBAN,
    as_feature,
    build_city,
    camera,
    feed_count,
    gb_code,
    outbox_messages,
    sensor,
)

BODY_LIMIT = 1_000_000


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """The shared settings with a small body limit, so the 413 test need not send 256 MB."""
    return settings.model_copy(update={"max_body_bytes": BODY_LIMIT})


async def test_registering_a_camera_decodes_its_gb_code_and_derives_its_view_polygon(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    created = await city.register(camera(TRANSPORT, 7, code="62010200051322000007"), TRANSPORT)
    FeedOut.model_validate(created)
    assert created["version"] == 1 and created["status"] == "unknown" and not created["retired"]
    assert created["gb28181"] == {
        "region": "62010200",
        "industry": "05",
        "industry_label": "traffic: checkpoint / e-police",
        "type": "132",
        "type_label": "IP camera",
        "network": "2",
        "network_label": "industry private network",
        "serial": "000007",
    }
    ring = created["fov_polygon"]["coordinates"][0]
    assert ring[0] == ring[-1] == pytest.approx(created["location"]["coordinates"])
    assert len(ring) == 35  # apex, 33 arc points, apex
    read = await client.get(f"/v1/feeds/{created['id']}")
    assert read.status_code == 200
    assert read.headers["etag"].startswith('"1.')  # the version, then the document's digest
    again = await client.get(
        f"/v1/feeds/{created['id']}", headers={"If-None-Match": read.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    assert {key: value for key, value in read.json().items() if key != "duplicates"} == {
        key: value for key, value in created.items() if key != "duplicates"
    }


async def test_a_geojson_feature_registers_the_same_feed_as_the_object_form(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    body = sensor(URBAN, 1)
    response = await client.post("/v1/feeds", json=as_feature(body), headers=city.as_(URBAN))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["kind"] == "sensor" and created["gb28181"] is None
    assert created["datastreams"] == body["datastreams"]
    assert created["location"] == body["location"]
    assert created["sharing"]["class"] == "conditional"


async def test_other_departments_never_see_the_internal_stream_url(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    created = await city.register(camera(TRANSPORT, 1), TRANSPORT)
    url = created["stream"]["url"]
    feed = f"/v1/feeds/{created['id']}"
    lon, lat = created["location"]["coordinates"]

    async def documents(headers: dict[str, str]) -> list[dict[str, Any]]:
        one = (await client.get(feed, headers=headers)).json()
        listed = (await client.get("/v1/feeds", headers=headers)).json()["items"]
        near = (
            await client.get("/v1/feeds", params={"near": f"{lon},{lat},50"}, headers=headers)
        ).json()
        search = await client.post("/v1/feeds/search", json={"kind": "camera"}, headers=headers)
        return [one, *listed, *near["items"], *search.json()["items"]]

    for headers in (city.as_(POLICE), city.as_(POLICE, "requester"), city.as_(URBAN, "gateway")):
        seen = await documents(headers)
        assert len(seen) == 4
        for document in seen:
            assert "url" not in document["stream"], document
            assert url not in str(document)
            assert document["stream"]["media_path"] == created["stream"]["media_path"]
    for headers in (city.as_(TRANSPORT, "requester"), {}):  # the owner's users, the city admin
        for document in await documents(headers):
            assert document["stream"]["url"] == url


async def test_only_the_owners_admins_or_the_city_admin_may_write_a_feed(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    body = camera(TRANSPORT, 1)
    for department, role in (
        (POLICE, "dept_admin"),
        (TRANSPORT, "requester"),
        (TRANSPORT, "gateway"),
    ):
        refused = await client.post("/v1/feeds", json=body, headers=city.as_(department, role))
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "not_feed_admin"
    created = await city.register(body, TRANSPORT)
    feed = f"/v1/feeds/{created['id']}"
    patch = {"name": "Renamed"}
    refused = await client.patch(feed, json=patch, headers={**city.as_(POLICE), "If-Match": '"1"'})
    assert refused.status_code == 403
    refused = await client.delete(feed, headers=city.as_(URBAN))
    assert refused.status_code == 403
    changed = await client.patch(
        feed, json=patch, headers={**city.as_(TRANSPORT), "If-Match": '"1"'}
    )
    assert changed.status_code == 200 and changed.json()["name"] == "Renamed"
    by_admin = await client.patch(feed, json={"name": "Again"}, headers={"If-Match": "2"})
    assert by_admin.status_code == 200 and by_admin.json()["version"] == 3


async def test_a_stale_if_match_is_refused_with_412_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    created = await city.register(camera(TRANSPORT, 1), TRANSPORT)
    feed = f"/v1/feeds/{created['id']}"
    first = await client.patch(feed, json={"name": "First editor"}, headers={"If-Match": '"1"'})
    assert first.status_code == 200 and first.headers["etag"].startswith('"2.')
    events_before = await outbox_messages(city.runtime, FEED_METADATA)
    stale = await client.patch(feed, json={"name": "Second editor"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json()["code"] == "version_mismatch"
    assert stale.json()["details"] == {"current_version": 2}
    current = (await client.get(feed)).json()
    assert current["name"] == "First editor" and current["version"] == 2
    assert await outbox_messages(city.runtime, FEED_METADATA) == events_before
    missing = await client.patch(feed, json={"name": "No precondition"})
    assert missing.status_code == 428
    assert missing.json()["code"] == "precondition_required"
    stale_retire = await client.delete(feed, headers={"If-Match": "1"})
    assert stale_retire.status_code == 412


async def test_patch_merges_fields_clears_nulls_and_bumps_the_version(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    created = await city.register(camera(TRANSPORT, 1), TRANSPORT)
    feed = f"/v1/feeds/{created['id']}"
    patch = {
        "fov": {"heading": 180},
        "altitude": None,
        "tags": ["road", "bridge"],
        "location": {"coordinates": [103.84, 36.07]},
        "sharing": {"class": "not_shared", "legal_basis": "Counter-espionage law, art. 5"},
    }
    response = await client.patch(feed, json=patch, headers={"If-Match": "1"})
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["fov"] == {"heading": 180.0, "angle": 60.0, "range_m": 100.0}
    assert changed["altitude"] is None
    assert changed["tags"] == ["road", "bridge"]
    assert changed["location"]["coordinates"] == [103.84, 36.07]
    assert changed["sharing"]["class"] == "not_shared"
    assert changed["version"] == 2 and changed["revision"] == 2
    assert changed["fov_polygon"] != created["fov_polygon"]
    same = await client.patch(feed, json={"tags": ["road", "bridge"]}, headers={"If-Match": "2"})
    assert (
        same.status_code == 200 and same.json()["version"] == 2
    )  # nothing changed, no new version
    for immutable in ({"owner": POLICE}, {"kind": "sensor"}, {"code": gb_code(99)}):
        refused = await client.patch(feed, json=immutable, headers={"If-Match": "2"})
        assert refused.status_code == 422 and refused.json()["code"] == "immutable_field"
    invalid = await client.patch(feed, json={"fov": {"angle": 0}}, headers={"If-Match": "2"})
    assert invalid.status_code == 422 and "fov.angle" in invalid.json()["message"]


async def test_retiring_keeps_the_feed_and_says_so(client: httpx.AsyncClient) -> None:
    city = await build_city(client)
    created = await city.register(camera(TRANSPORT, 1), TRANSPORT)
    feed = f"/v1/feeds/{created['id']}"
    retired = await client.delete(feed, headers=city.as_(TRANSPORT))
    assert retired.status_code == 200
    assert retired.json()["retired"] is True and retired.json()["version"] == 2
    again = await client.delete(feed)
    assert again.status_code == 200 and again.json()["version"] == 2
    read = (await client.get(feed)).json()
    assert read["retired"] is True and read["retired_at"] is not None
    assert (await client.get("/v1/feeds")).json()["total"] == 0
    listed = (await client.get("/v1/feeds", params={"include_retired": "true"})).json()
    assert [item["id"] for item in listed["items"]] == [created["id"]]
    edit = await client.patch(feed, json={"name": "x"}, headers={"If-Match": "2"})
    assert edit.status_code == 409 and edit.json()["code"] == "feed_retired"


async def test_one_department_cannot_register_a_code_twice(client: httpx.AsyncClient) -> None:
    city = await build_city(client)
    created = await city.register(camera(TRANSPORT, 1), TRANSPORT)
    again = await client.post("/v1/feeds", json=camera(TRANSPORT, 1, name="Again"))
    assert again.status_code == 409
    assert again.json()["code"] == "feed_exists"
    assert again.json()["details"]["id"] == created["id"]
    assert await feed_count(city.runtime) == 1


async def test_the_same_code_from_another_department_is_stored_and_flagged(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    original = await city.register(camera(POLICE, 1), POLICE)
    assert original["duplicates"] == []
    copy_body = camera(TRANSPORT, 1)  # same GB code, same stream URL
    duplicate = await city.register(copy_body, TRANSPORT)
    assert duplicate["duplicates"] == [
        {"feed_id": original["id"], "owner": POLICE, "reasons": ["same_code", "same_stream_url"]}
    ]
    assert await feed_count(city.runtime) == 2


async def test_an_unknown_feed_is_404(client: httpx.AsyncClient) -> None:
    await build_city(client)
    for method in ("GET", "DELETE"):
        response = await client.request(method, "/v1/feeds/01HZZZZZZZZZZZZZZZZZZZZZZZ")
        assert response.status_code == 404 and response.json()["code"] == "feed_not_found"


def _bad_inputs() -> list[tuple[str, dict[str, Any], str]]:
    """(what is wrong, body, text the message must contain)."""
    good = camera(TRANSPORT, 1)

    def changed(path: str, value: Any) -> dict[str, Any]:
        body = copy.deepcopy(good)
        target = body
        *parents, leaf = path.split(".")
        for part in parents:
            target = target[part]
        target[leaf] = value
        return body

    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [[103.83, 36.06], [103.84, 36.07], [103.84, 36.06], [103.83, 36.07], [103.83, 36.06]]
        ],
    }  # noqa: E501
    open_ring = {
        "type": "Polygon",
        "coordinates": [[[103.83, 36.06], [103.84, 36.06], [103.84, 36.07], [103.83, 36.07]]],
    }  # noqa: E501
    import math

    many = [
        [103.83 + 0.01 * math.cos(k / 300 * math.tau), 36.06 + 0.01 * math.sin(k / 300 * math.tau)]
        for k in range(1500)
    ]
    many.append(many[0])
    return [
        ("19-digit GB code", changed("code", "6201020004132200001"), "GB/T 28181"),
        ("letters in the GB code", changed("code", "6201020004132200000A"), "GB/T 28181"),
        ("unknown industry", changed("code", "62010200201322000001"), "industry"),
        ("unknown device type", changed("code", "62010200049992000001"), "device type"),
        ("unknown network", changed("code", "62010200041329000001"), "network"),
        ("unknown province", changed("code", "99010200041322000001"), "province"),
        ("longitude out of range", changed("location.coordinates", [181.0, 36.0]), "longitude"),
        ("latitude out of range", changed("location.coordinates", [103.0, -90.5]), "latitude"),
        ("self-intersecting coverage", changed("coverage", bowtie), "Self-intersection"),
        ("unclosed coverage ring", changed("coverage", open_ring), "closed"),
        (
            "too many vertices",
            changed("coverage", {"type": "Polygon", "coordinates": [many]}),
            "at most 1000",
        ),
        ("FOV angle 0", changed("fov.angle", 0), "fov.angle"),
        ("FOV angle 361", changed("fov.angle", 361), "fov.angle"),
        ("FOV heading 360", changed("fov.heading", 360), "fov.heading"),
        ("FOV range too far", changed("fov.range_m", 50_000), "fov.range_m"),
        ("unknown department", changed("owner", "lz-nowhere"), "does not exist"),
        ("name is a number", changed("name", 12), "name"),
        ("altitude is text", changed("altitude", "1500"), "altitude"),
        ("open_to_public is text", changed("catalog.open_to_public", "yes"), "open_to_public"),
        ("location is text", changed("location", "Lanzhou"), "location"),
        ("unknown property", changed("colour", "red"), "colour"),
        (
            "not_shared without legal basis",
            changed("sharing", {"class": "not_shared"}),
            "legal basis",
        ),
        ("media path climbs out", changed("stream.media_path", "lz-tb/../secret"), ".."),
        ("stream URL without host", changed("stream.url", "rtsp:/nohost"), "stream.url"),
        ("sensor with a FOV", {**sensor(TRANSPORT, 2), "fov": good["fov"]}, "fov"),
        ("sensor without datastreams", {**sensor(TRANSPORT, 3), "datastreams": []}, "datastream"),
    ]


async def test_each_bad_input_is_a_4xx_with_its_reason_and_nothing_is_written(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    events_before = await outbox_messages(city.runtime)
    failures = []
    for what, body, reason in _bad_inputs():
        response = await client.post("/v1/feeds", json=body)
        error = response.json()
        if not (400 <= response.status_code < 500 and set(error) == {"code", "message", "details"}):
            failures.append(f"{what}: HTTP {response.status_code} {response.text[:200]}")
        elif reason.lower() not in (error["message"] + str(error["details"])).lower():
            failures.append(f"{what}: reason {reason!r} missing from {error['message']!r}")
    assert not failures, "\n".join(failures)
    assert await feed_count(city.runtime) == 0
    assert await outbox_messages(city.runtime) == events_before
    assert (await client.get("/v1/feeds")).json()["total"] == 0


async def test_an_oversized_body_is_refused_before_it_is_read(client: httpx.AsyncClient) -> None:
    city = await build_city(client)
    limit = city.runtime.settings.max_body_bytes
    assert limit == BODY_LIMIT
    response = await client.post(
        "/v1/feeds/bulk",
        content=b" " * (limit + 1),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert await feed_count(city.runtime) == 0
