"""Duplicate detection across departments on the demo city, whose planted duplicates we know."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from deploy.seed.departments import departments
from deploy.seed.feeds import generate_feeds
from tests.integration.feeds_support import ROLES


async def _all_groups(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = await client.get("/v1/catalog/duplicates", params=params, headers=headers or {})
        assert page.status_code == 200, page.text
        groups += page.json()["groups"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return groups


async def test_planted_duplicates_are_found_with_their_evidence(client: httpx.AsyncClient) -> None:
    for department in departments():
        assert (await client.post("/v1/departments", json=department)).status_code == 201
    generated = generate_feeds(cameras=8_000, sensors=200, seed=7)
    body = b"\n".join(orjson.dumps(feature) for feature in generated.features)
    imported = await client.post(
        "/v1/feeds/bulk", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert imported.json()["rejected"] == []
    listed = (
        await client.get("/v1/feeds", params={"include_retired": "true", "limit": 1000})
    ).json()
    assert listed["total"] == 8_200
    planted = {
        kind: [d for d in generated.duplicates if d["kind"] == kind]
        for kind in ("same_code", "same_stream_url", "nearby_overlapping_view")
    }
    assert all(planted.values()), "the generator planted every kind"

    groups = await _all_groups(client)
    found: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for group in groups:
        members = frozenset((feed["owner"], feed["code"]) for feed in group["feeds"])
        found.setdefault(group["reason"], set()).add(members)
        assert len(group["departments"]) >= 2
    for kind, pairs in planted.items():
        expected = {
            frozenset(
                {
                    (d["original"]["owner"], d["original"]["code"]),
                    (d["duplicate"]["owner"], d["duplicate"]["code"]),
                }
            )
            for d in pairs
        }
        assert expected <= found.get(kind, set()), kind
    assert found["nearby_overlapping_view"] == {
        frozenset(
            {
                (d["original"]["owner"], d["original"]["code"]),
                (d["duplicate"]["owner"], d["duplicate"]["code"]),
            }
        )
        for d in planted["nearby_overlapping_view"]
    }
    nearby = next(group for group in groups if group["reason"] == "nearby_overlapping_view")
    (pair,) = nearby["evidence"]["pairs"]
    assert 0 < pair["distance_m"] <= 3.0 and pair["fov_overlap_m2"] > 0
    same_code = next(group for group in groups if group["reason"] == "same_code")
    assert same_code["evidence"]["code"] == same_code["feeds"][0]["code"]


async def test_stream_url_evidence_is_a_hash_except_for_the_city_admin(
    client: httpx.AsyncClient,
) -> None:
    for department in departments()[:5]:
        assert (await client.post("/v1/departments", json=department)).status_code == 201
    key = await client.post(
        "/v1/departments/lz-eeb/api-keys", json={"name": "reader", "roles": [ROLES[1]]}
    )
    reader = {"Authorization": f"Bearer {key.json()['key']}"}
    generated = generate_feeds(cameras=3_000, sensors=0, seed=11)
    body = b"\n".join(orjson.dumps(feature) for feature in generated.features)
    await client.post(
        "/v1/feeds/bulk", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    planted_urls = {
        d["duplicate"]["stream_url"] for d in generated.duplicates if d["kind"] == "same_stream_url"
    }
    assert planted_urls
    admin_view = [g for g in await _all_groups(client) if g["reason"] == "same_stream_url"]
    reader_view = [g for g in await _all_groups(client, reader) if g["reason"] == "same_stream_url"]
    assert planted_urls <= {url for group in admin_view for url in group["evidence"]["stream_urls"]}
    assert len(reader_view) == len(admin_view)
    for group in reader_view:
        assert (
            "stream_urls" not in group["evidence"]
            and len(group["evidence"]["stream_url_sha256"]) == 64
        )
        assert not any(url in orjson.dumps(group).decode() for url in planted_urls)
    only_codes = await client.get("/v1/catalog/duplicates", params={"reason": "same_code"})
    assert {group["reason"] for group in only_codes.json()["groups"]} == {"same_code"}
