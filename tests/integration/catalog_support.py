"""Helpers of the catalog tests: fixture files, posting MANSCDP, reading what was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from registry_api.catalog.models import CatalogNode, CatalogPart
from registry_api.feeds.models import Feed
from registry_api.runtime import Runtime

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalog"
MANSCDP = {"Content-Type": "Application/MANSCDP+xml"}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def post_catalog(
    client: httpx.AsyncClient,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    return await client.post(
        "/v1/catalog/manscdp", content=body, params=params, headers={**MANSCDP, **(headers or {})}
    )


async def applied(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None, **params: str
) -> dict[str, Any]:
    response = await post_catalog(client, body, headers=headers, **params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def feeds_of(client: httpx.AsyncClient, **params: Any) -> dict[str, dict[str, Any]]:
    """Feeds found by the list filters, by code."""
    response = await client.get("/v1/feeds", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return {item["code"]: item for item in response.json()["items"]}


async def registry_counts(runtime: Runtime) -> tuple[int, int, int]:
    """(feeds, catalog nodes, waiting catalog parts) in the registry."""
    async with runtime.sessions() as session:
        feeds = await session.scalar(select(func.count()).select_from(Feed))
        nodes = await session.scalar(select(func.count()).select_from(CatalogNode))
        parts = await session.scalar(select(func.count()).select_from(CatalogPart))
    return int(feeds or 0), int(nodes or 0), int(parts or 0)
