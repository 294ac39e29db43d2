"""Loading the demo city into a running FeedGrid through its public HTTP API."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from schemas.settings import Settings

log = logging.getLogger("feedgrid.demo")


async def load_city(directory: Path, base_url: str, token: str) -> dict[str, Any]:
    """Creates the departments (existing ones are kept) and bulk-imports the feeds."""
    headers = {"Authorization": f"Bearer {token}"}
    departments = orjson.loads((directory / "departments.json").read_bytes())
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600) as http:
        for department in departments:
            response = await http.post("/v1/departments", json=department)
            if response.status_code not in (201, 409):
                response.raise_for_status()
        started = time.perf_counter()
        response = await http.post(
            "/v1/feeds/bulk",
            content=(directory / "feeds.ndjson").read_bytes(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        response.raise_for_status()
        summary: dict[str, Any] = response.json()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["departments"] = len(departments)
    return summary


async def load_demo_city_once(settings: Settings, base_url: str, token: str) -> None:
    """Generates the demo city if needed and loads it once per registry database."""
    from deploy.seed.writer import write_demo_city

    directory = settings.var_dir / "demo"
    if not (directory / "manifest.json").exists():
        log.info("generating the demo city into %s", directory)
        write_demo_city(directory, progress=True)
    marker = (
        directory / f".loaded-{hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]}"
    )
    if marker.exists():
        log.info("demo city already loaded (remove %s to load it again)", marker)
        return
    summary = await load_city(directory, base_url, token)
    rejected = summary.get("rejected", [])
    log.info(
        "demo city loaded: %s created, %s updated, %s unchanged, %s rejected in %ss",
        summary.get("created"),
        summary.get("updated"),
        summary.get("unchanged"),
        len(rejected),
        summary["seconds"],
    )
    marker.write_text(orjson.dumps(summary | {"rejected": rejected[:20]}).decode())
