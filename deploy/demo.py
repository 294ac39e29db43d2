"""Loading the demo city into a running FeedGrid once, when `feedgrid up` starts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import orjson

from schemas.settings import Settings

log = logging.getLogger("feedgrid.demo")


async def load_demo_city_once(settings: Settings, base_url: str, token: str) -> None:
    """Generates the demo city if needed and loads it once per registry database."""
    from deploy.seed.cli import load_into_api
    from deploy.seed.writer import write_demo_city

    directory = settings.var_dir / "demo"
    if not (directory / "manifest.json").exists():
        log.info("generating the demo city into %s", directory)
        await asyncio.to_thread(write_demo_city, directory)
    database_id = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
    marker = directory / f".loaded-{database_id}"
    if marker.exists():
        log.info("demo city already loaded (remove %s to load it again)", marker)
        return
    started = time.perf_counter()
    try:
        summary = await asyncio.to_thread(load_into_api, directory, base_url, token)
    except Exception as error:
        log.error("the demo city could not be loaded: %s", error)
        return
    bulk = summary.get("bulk", {})
    rejected = bulk.get("rejected", [])
    log.info(
        "demo city loaded: %s created, %s updated, %s unchanged, %s rejected in %.1fs",
        bulk.get("created"),
        bulk.get("updated"),
        bulk.get("unchanged"),
        len(rejected),
        time.perf_counter() - started,
    )
    marker.write_text(orjson.dumps(summary | {"bulk": bulk | {"rejected": rejected[:20]}}).decode())
