"""Loading the demo city into a running FeedGrid once, when `feedgrid up` starts.

Two steps, each remembered by its own marker under ``var/demo`` (per registry database), so a
second `feedgrid up` repeats neither: the departments and feeds (``.loaded-<db>``), then a
replay of the seeded access traffic through the API (``.traffic-<db>``), which gives a new
user's analytics and dashboard something to show.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import orjson

from deploy.demo_traffic import TrafficSummary
from schemas.settings import Settings

log = logging.getLogger("feedgrid.demo")


def _markers(settings: Settings) -> tuple[Path, Path, Path]:
    """The demo directory and the markers of its city and traffic for this registry."""
    directory = settings.var_dir / "demo"
    database_id = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
    return directory, directory / f".loaded-{database_id}", directory / f".traffic-{database_id}"


async def load_demo_city_once(
    settings: Settings, base_url: str, token: str, *, progress: bool = True
) -> TrafficSummary | None:
    """Generates the demo city if needed, loads it, then replays its traffic, each once per
    registry database. Returns what the replay did, or None when it did not run."""
    from deploy.seed.writer import write_demo_city

    directory, city_marker, traffic_marker = _markers(settings)
    if not (directory / "manifest.json").exists():
        log.info("generating the demo city into %s", directory)
        await asyncio.to_thread(write_demo_city, directory)
    if city_marker.exists():
        log.info("demo city already loaded (remove %s to load it again)", city_marker)
    elif not await _load_city(directory, city_marker, base_url, token):
        return None
    if traffic_marker.exists():
        state = orjson.loads(traffic_marker.read_bytes()).get("state")
        if state == "done":
            log.info("demo traffic already replayed (remove %s to replay it)", traffic_marker)
        else:
            log.warning(
                "the demo traffic replay did not finish before (%s); not replaying it on top of "
                "what it made: remove %s to replay anyway",
                state,
                traffic_marker,
            )
        return None
    return await _replay_traffic(directory, traffic_marker, base_url, token, progress)


async def _load_city(directory: Path, marker: Path, base_url: str, token: str) -> bool:
    from deploy.seed.cli import load_into_api

    started = time.perf_counter()
    try:
        summary = await asyncio.to_thread(load_into_api, directory, base_url, token)
    except Exception as error:
        log.error("the demo city could not be loaded: %s", error)
        return False
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
    return True


async def _replay_traffic(
    directory: Path, marker: Path, base_url: str, token: str, progress: bool
) -> TrafficSummary | None:
    import httpx

    from deploy.demo_traffic import DEFAULT_CONCURRENCY, replay_demo_traffic

    if not (directory / "access-requests.ndjson").exists():
        log.info("the demo city has no access requests to replay")
        return None
    # Written before the first call: a replay cut short (Ctrl-C) is not run again on top of
    # the requests it already made.
    _write_marker(marker, {"state": "started"})
    try:
        async with httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(120.0, connect=10.0),
            limits=httpx.Limits(max_connections=DEFAULT_CONCURRENCY * 2),
        ) as client:
            summary = await replay_demo_traffic(client, directory, progress=progress)
    except Exception as error:
        log.error("the demo traffic could not be replayed: %s", error)
        _write_marker(marker, {"state": "failed", "error": str(error)[:2000]})
        return None
    log.info("demo traffic replayed: %s", summary.one_line())
    _write_marker(marker, {"state": "done"} | summary.as_dict())
    return summary


def _write_marker(marker: Path, content: dict[str, Any]) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps(content, option=orjson.OPT_INDENT_2))
