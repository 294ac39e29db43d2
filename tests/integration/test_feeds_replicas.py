"""Two API replicas on one PostgreSQL: what one writes, the other's search finds (scale mode).

Each replica answers searches from its own in-memory index; the follower
(registry_api/feeds/follower.py) applies the feed-metadata events the active relay publishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from registry_api.app import follows_other_replicas
from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.feeds_support import (
    POLICE,
    TRANSPORT,
    as_feature,
    build_city,
    camera,
    offset,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 45.0) -> Any:
    """Polls ``check`` until it returns a truthy value; fails with the last value after."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            assert value, f"not reached within {timeout}s: {value!r}"
            return value
        await asyncio.sleep(0.2)


async def near_ids(client: httpx.AsyncClient, point: list[float], metres: int) -> list[str]:
    response = await client.get(
        "/v1/feeds", params={"near": f"{point[0]},{point[1]},{metres}", "limit": 500}
    )
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_replicas_follow_by_default_on_postgresql_only(settings: Settings) -> None:
    settings = settings.model_copy(update={"index_follow": None})
    sqlite = settings.model_copy(update={"database_url": "sqlite+aiosqlite:///x.db"})
    postgres = settings.model_copy(update={"database_url": "postgresql+asyncpg://u:p@h/db"})
    assert follows_other_replicas(postgres) and not follows_other_replicas(sqlite)
    assert not follows_other_replicas(postgres.model_copy(update={"index_follow": False}))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_what_one_replica_writes_the_other_finds(settings: Settings) -> None:
    following = settings.model_copy(update={"index_follow": True})
    async with running_client(following) as first, running_client(following) as second:
        city = await build_city(first)
        here, there = offset(2_000, 0), offset(-3_000, 1_500)

        created = await city.register(camera(POLICE, 1, at=here), POLICE)
        feed_id = created["id"]
        await eventually(lambda: _contains(near_ids(second, here, 50), feed_id))

        moved = await first.patch(
            f"/v1/feeds/{feed_id}",
            json={"location": {"type": "Point", "coordinates": there}},
            headers={**city.as_(POLICE), "If-Match": str(created["version"])},
        )
        assert moved.status_code == 200, moved.text
        await eventually(lambda: _contains(near_ids(second, there, 50), feed_id))
        assert feed_id not in await near_ids(second, here, 50)

        retired = await first.delete(f"/v1/feeds/{feed_id}", headers=city.as_(POLICE))
        assert retired.status_code in (200, 204), retired.text
        await eventually(lambda: _lacks(near_ids(second, there, 50), feed_id))

        # a bulk import on the second replica reaches the first one's index
        block = offset(5_000, 5_000)
        features = [
            as_feature(camera(TRANSPORT, 1_000 + index, at=[block[0] + index * 1e-5, block[1]]))
            for index in range(300)
        ]
        imported = await second.post(
            "/v1/feeds/bulk",
            json={"type": "FeatureCollection", "features": features},
            headers=city.as_(TRANSPORT),
        )
        assert imported.status_code == 200, imported.text
        assert imported.json()["created"] == 300
        expected = set(await near_ids(second, block, 400))
        assert len(expected) == 300
        await eventually(lambda: _equals(near_ids(first, block, 400), expected))


async def _contains(ids: Awaitable[list[str]], wanted: str) -> bool:
    return wanted in await ids


async def _lacks(ids: Awaitable[list[str]], unwanted: str) -> bool:
    return unwanted not in await ids


async def _equals(ids: Awaitable[list[str]], expected: set[str]) -> bool:
    return set(await ids) == expected
