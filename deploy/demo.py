"""The demo city in a running FeedGrid, when `feedgrid up` starts.

Two steps run once, each remembered by its own marker under ``var/demo`` (per registry
database), so a second `feedgrid up` repeats neither: the departments and feeds
(``.loaded-<db>``), then the seeded access traffic (``.traffic-<db>``): all its requests
replayed through the API as the departments would make them, and its recorded week
(``deploy/demo_history.py``) produced to the access-events topic with its own times, so the
charts show a week of work. On every start, the city's gateways report liveness through the
API while FeedGrid runs (``deploy/demo_gateways.py``).

Everything on the page should have something to show within a minute of the start, so the
order is: a first wave of ``FIRST_WAVE`` requests spread over the week and the recorded week
built from its answers (every analytics panel, misuse alerts included), then the gateways
(their first round brings the map's feeds online) and two platforms' GB/T 28181 catalogs (the
catalog tree, ``.catalogs-<db>``), then the other requests and the rest of the recorded week.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from deploy.demo_history import HistorySummary
from deploy.demo_traffic import LIVE_PLAYED_GRANTS, ReplayedRequest, TrafficSummary
from infra.heap import settle
from schemas.settings import Settings

log = logging.getLogger("feedgrid.demo")

# Requests replayed (spread over the week) before the first part of the recorded week is sent:
# enough grants for every kind of misuse the week holds, a few seconds of replay.
FIRST_WAVE = 250


class DemoClients:
    """The demo's clients in a process of their own beside FeedGrid: the departments replaying
    their access requests and the gateways reporting liveness (:func:`load_demo_city_once`).

    They stand for people and devices on other machines. Run on FeedGrid's event loop, as they
    were, every request's client side (building it, reading its answer) and every gateway
    round took the server's interpreter, which holds one core at a time: on two cores the
    replay took what the server and its own clients left each other. A process of their own
    takes the other core, as a real department's would, and FeedGrid keeps its one
    process for every role (``up``). The process ends with FeedGrid: stopped by
    :meth:`stop`, or by itself within a second when it finds FeedGrid gone.
    """

    def __init__(self, settings: Settings, base_url: str, token: str) -> None:
        self.settings = settings
        self.base_url = base_url
        self.token = token
        self._process: multiprocessing.process.BaseProcess | None = None

    async def start(self) -> None:
        """Starts the process and returns once the city is loaded and its traffic replayed
        (the gateways go on reporting); then what FeedGrid's loading built settles
        (infra/heap)."""
        context = multiprocessing.get_context("spawn")  # nothing of the server's state copied
        loaded, told = context.Pipe(duplex=False)
        process = context.Process(
            target=_run_demo_clients,
            args=(self.settings, self.base_url, self.token, told, os.getpid()),
            name="feedgrid-demo-clients",
            daemon=True,
        )
        process.start()
        told.close()
        self._process = process
        while process.is_alive() and not loaded.poll():
            await asyncio.sleep(0.5)
        told_loaded = False
        with contextlib.suppress(EOFError, OSError):
            told_loaded = loaded.poll() and bool(loaded.recv())
        loaded.close()
        if not told_loaded:
            log.warning("the demo's clients ended early (exit code %s)", process.exitcode)
        settle("demo city loaded")  # what the loading left in memory stays (infra/heap)

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or not process.is_alive():
            return
        process.terminate()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)


def _run_demo_clients(
    settings: Settings, base_url: str, token: str, loaded: Connection, parent: int
) -> None:
    """The demo clients' process: loads the city, replays its traffic, tells the parent, and
    runs the gateways until it is stopped."""
    from infra.event_loop import run as run_loop
    from infra.structured_logging import configure_logging

    # Ctrl-C reaches the terminal's whole process group: FeedGrid stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_format, settings.log_level)

    async def main() -> None:
        watch = asyncio.create_task(_watch_parent(parent), name="parent-watch")
        await load_demo_city_once(settings, base_url, token, gateways=True)
        loaded.send(True)
        loaded.close()
        await watch  # the gateways report until FeedGrid stops this process

    run_loop(main(), settings.event_loop)


async def _watch_parent(parent: int) -> None:
    """Ends the process within a second of its parent's end (killed, or crashed)."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    os._exit(0)


def _markers(settings: Settings) -> tuple[Path, Path, Path, Path]:
    """The demo directory and the markers of its city, traffic and catalogs for this
    registry."""
    directory = settings.var_dir / "demo"
    database_id = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
    return (
        directory,
        directory / f".loaded-{database_id}",
        directory / f".traffic-{database_id}",
        directory / f".catalogs-{database_id}",
    )


async def load_demo_city_once(
    settings: Settings,
    base_url: str,
    token: str,
    *,
    progress: bool = True,
    gateways: bool = False,
    live_played_grants: int = LIVE_PLAYED_GRANTS,
    first_wave: int = FIRST_WAVE,
) -> TrafficSummary | None:
    """Generates the demo city if needed, loads it, replays its traffic and its recorded week
    (``first_wave`` requests first, see the module's text), each once per registry database,
    and starts its gateways (``gateways``: they run in the background until the process
    ends). Returns what the replay did, or None when it did not run."""
    from deploy.seed.writer import write_demo_city

    directory, city_marker, traffic_marker, catalog_marker = _markers(settings)
    if not (directory / "manifest.json").exists():
        log.info("generating the demo city into %s", directory)
        await asyncio.to_thread(write_demo_city, directory)
    if city_marker.exists():
        log.info("demo city already loaded (remove %s to load it again)", city_marker)
    elif not await _load_city(directory, city_marker, base_url, token):
        return None
    started = False

    async def after_first_wave() -> None:
        """The gateways and the platforms' catalogs, once the analytics have their first week."""
        nonlocal started
        if started:
            return
        started = True
        if gateways:
            await start_gateways(settings, base_url, token)
        if not catalog_marker.exists():
            answers = await _post_catalogs(directory, base_url, token)
            if answers:
                _write_marker(catalog_marker, answers)

    replay = _TrafficStep(
        settings,
        directory,
        traffic_marker,
        base_url,
        token,
        progress=progress,
        live_played_grants=live_played_grants,
        first_wave=first_wave,
        after_first_wave=after_first_wave,
    )
    replayed = await replay.run_once()
    await after_first_wave()
    return replayed


@dataclass
class _TrafficStep:
    """The seeded traffic replayed through the API and its recorded week, once per database."""

    settings: Settings
    directory: Path
    marker: Path
    base_url: str
    token: str
    progress: bool
    live_played_grants: int
    first_wave: int
    after_first_wave: Callable[[], Awaitable[None]]
    now: datetime = field(default_factory=lambda: datetime.now(UTC))  # the week ends then
    history: HistorySummary = field(default_factory=HistorySummary)  # what has been sent

    async def run_once(self) -> TrafficSummary | None:
        if self.marker.exists():
            state = orjson.loads(self.marker.read_bytes()).get("state")
            if state == "done":
                log.info("demo traffic already replayed (remove %s to replay it)", self.marker)
            else:
                log.warning(
                    "the demo traffic replay did not finish before (%s); not replaying it on top "
                    "of what it made: remove %s to replay anyway",
                    state,
                    self.marker,
                )
            return None
        return await self._run()

    async def _run(self) -> TrafficSummary | None:
        import httpx

        from deploy.demo_traffic import DEFAULT_CONCURRENCY, replay_demo_traffic

        if not (self.directory / "access-requests.ndjson").exists():
            log.info("the demo city has no access requests to replay")
            return None
        # Written before the first call: a replay cut short (Ctrl-C) is not run again on top
        # of the requests it already made.
        _write_marker(self.marker, {"state": "started"})
        self.now = datetime.now(UTC)
        self.history = HistorySummary()
        try:
            async with httpx.AsyncClient(
                base_url=self.base_url.rstrip("/"),
                headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
                timeout=httpx.Timeout(120.0, connect=10.0),
                limits=httpx.Limits(max_connections=DEFAULT_CONCURRENCY * 2),
            ) as client:
                summary = await replay_demo_traffic(
                    client,
                    self.directory,
                    progress=self.progress,
                    live_played_grants=self.live_played_grants,
                    first_wave=self.first_wave,
                    on_wave=self._record,
                )
            log.info("demo traffic replayed: %s", summary.one_line())
        except Exception as error:
            log.error("the demo traffic could not be replayed: %s", error)
            _write_marker(self.marker, {"state": "failed", "error": str(error)[:2000]})
            return None
        history = summary.history = self.history
        log.info(
            "demo: the recorded week (%s to %s) sent to the stream: %s events, %s retrievals, "
            "misuse %s",
            history.start,
            history.end,
            history.events,
            history.retrievals,
            dict(history.misuse),
        )
        content = {"state": "done"} | summary.as_dict() | {"history": history.as_dict()}
        _write_marker(self.marker, content)
        return summary

    async def _record(
        self, answered: list[ReplayedRequest], latest: datetime | None, first: bool
    ) -> None:
        """Sends a wave's part of the recorded week (the first wave's has the misuse)."""
        from deploy.demo_history import send_recorded_week
        from deploy.demo_traffic import DEFAULT_SEED

        part = await send_recorded_week(
            self.settings, answered, seed=DEFAULT_SEED, now=self.now, latest=latest, misuse=first
        )
        self.history += part
        log.info(
            "demo: %s of the recorded week sent to the stream: %s events from %s requests",
            "the first part" if first else "the rest",
            part.events,
            len(answered),
        )
        if first:
            await self.after_first_wave()


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


async def _post_catalogs(directory: Path, base_url: str, token: str) -> dict[str, Any]:
    """Two departments' platforms answer with their GB/T 28181 catalogs of the city's cameras
    (``POST /v1/catalog/manscdp``, as their gateways would): the catalog tree. The channels
    are the feeds just loaded, named and placed alike, so only the tree is written."""
    import httpx

    from deploy.catalog_samples import demo_city_catalogs

    answers: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "Application/MANSCDP+xml"},
        timeout=httpx.Timeout(300.0, connect=10.0),
    ) as client:
        catalogs = await asyncio.to_thread(demo_city_catalogs, directory / "feeds.ndjson")
        for department, (platform, body) in catalogs.items():
            if body is None:
                continue
            answer = await client.post(
                "/v1/catalog/manscdp", params={"department": department}, content=body
            )
            if answer.status_code != 200:
                log.error(
                    "the demo catalog of %s was refused: HTTP %s: %s",
                    department,
                    answer.status_code,
                    answer.text[:300],
                )
                continue
            result = answer.json()
            answers[department] = result
            log.info(
                "demo catalog of %s's platform %s applied: channels %s, %s tree nodes written, "
                "%s rejected",
                department,
                platform,
                result["channels"],
                result["nodes_written"],
                len(result["rejected"]),
            )
    return answers


_gateway_tasks: set[asyncio.Task[None]] = set()


async def start_gateways(settings: Settings, base_url: str, token: str) -> None:
    """Starts the city's gateways in the background (they report until the process ends)."""
    import httpx

    from deploy.demo_gateways import CityGateways, GatewaySimulator, issue_gateway_keys

    client = httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=httpx.Timeout(60.0, connect=10.0),
    )
    try:
        answer = await client.get("/v1/feeds/points")
        answer.raise_for_status()
        plan = CityGateways.plan(answer.json())
        keys_path = settings.var_dir / "demo" / "gateway-keys.json"
        owners = sorted(set(plan.reporting) | set(plan.flapping))
        keys = _read_keys(keys_path)
        if not await _keys_work(client, keys, owners):
            keys = await issue_gateway_keys(client, owners)
            keys_path.write_bytes(orjson.dumps(keys))
            keys_path.chmod(0o600)
    except Exception as error:
        await client.aclose()
        log.error("the demo gateways could not start: %s", error)
        return
    log.info("demo gateways report liveness: %s", plan.describe())
    simulator = GatewaySimulator(client, keys, plan)

    async def run() -> None:
        try:
            await simulator.run()
        finally:
            await client.aclose()

    task = asyncio.create_task(run(), name="demo-gateways")
    _gateway_tasks.add(task)
    task.add_done_callback(_gateway_tasks.discard)


def _read_keys(path: Path) -> dict[str, str]:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


async def _keys_work(client: Any, keys: dict[str, str], owners: list[str]) -> bool:
    if not owners or set(owners) - set(keys):
        return not owners
    answer = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {keys[owners[0]]}"})
    return bool(answer.status_code == 200)


def _write_marker(marker: Path, content: dict[str, Any]) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps(content, option=orjson.OPT_INDENT_2))
