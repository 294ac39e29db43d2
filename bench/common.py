"""What the benchmarks share: the JSON figure printer, the progress bar, the local services
(Kafka, the PostgreSQL test cluster), free ports, the random search queries and a media-server
hook body. Each ``bench_*.py`` imports from here, never from another benchmark."""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import os
import random
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra.kafka_admin import delete_topics_under
from registry_api.feeds.geodesy import offset_points

ADMIN_TOKEN = "bench-admin-token-0123456789"
KAFKA = os.environ.get("FEEDGRID_TEST_KAFKA", "127.0.0.1:9092")
POSTGRES_ADMIN = os.environ.get(
    "FEEDGRID_TEST_POSTGRES", "postgresql://feedgrid:feedgrid@127.0.0.1:55432/feedgrid"
)
console = Console(stderr=True)
Feature = dict[str, Any]


# The topic prefixes this benchmark process handed to its servers: their topics are deleted
# when it exits, as the test suite deletes its own, or every run would leave its topics (six
# partitions each) on the developer's broker (a day of runs left 8,500 partitions).
_TOPIC_PREFIXES: list[str] = []


def topic_prefix() -> str:
    """A topic prefix of its own for a server this benchmark starts, its topics deleted from
    the local broker when the benchmark ends."""
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    if not _TOPIC_PREFIXES:
        atexit.register(_delete_topics)
    _TOPIC_PREFIXES.append(prefix)
    return prefix


def _delete_topics() -> None:
    try:
        deleted = asyncio.run(delete_topics_under(KAFKA, _TOPIC_PREFIXES))
    except Exception as error:  # the broker gone first: nothing left to tidy
        console.print(f"[yellow]the benchmark's topics were not deleted: {error}[/yellow]")
        return
    console.print(f"deleted the {deleted} topics the benchmark made")


def stop_cleanly_on_sigterm() -> None:
    """A SIGTERM (``run_all``'s timeout, a user's ``kill``) ends the benchmark the way Ctrl-C
    does: as an exception, so its ``finally`` blocks and context managers stop the servers
    it started. They run in sessions of their own (a signal to the benchmark's group does not
    reach them), and a benchmark that died of the default SIGTERM left them running, holding
    their ports, their data directories and a core. A second SIGTERM during the clean-up is
    ignored; SIGKILL still ends it at once."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    console.print("terminated: stopping what this benchmark started")
    raise SystemExit(128 + signum)


def require_kafka(timeout: float = 3.0) -> None:
    """Exits with what to do unless the Kafka broker at ``KAFKA`` takes a connection: before
    the long parts of a run, not after them. The servers a benchmark starts relay their
    outbox to it (``feedgrid up --no-kafka`` runs its stream worker on it too). Without one
    the relay only retries, and the figures, which say the relay is on, would miss its share
    of the work: in process, an access request for 100 feeds took 17 ms at the median with
    the relay off and 21-25 ms with it publishing."""
    host, _, port = KAFKA.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise SystemExit(
            f"Kafka does not answer at {KAFKA} ({error}). Start it with `feedgrid kafka start` "
            "(./deploy/bench does), or point FEEDGRID_TEST_KAFKA at a broker"
        ) from None


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    figure = {
        "name": name,
        "value": round(value, 3) if isinstance(value, float) else value,
        "unit": unit,
    }
    figure.update(extra)
    print(orjson.dumps(figure).decode(), flush=True)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def read_exposition(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition: ``name{labels}`` -> value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            samples[key] = float(value)
        except ValueError:
            continue
    return samples


def scrape(url: str) -> dict[str, float]:
    """Every sample of the process's ``/metrics``: ``name{labels}`` -> value."""
    return read_exposition(httpx.get(f"{url}/metrics", timeout=30).text)


def relay_caught_up(url: str, timeout: float = 300.0) -> float:
    """Waits until the server's outbox relay has published every committed event (its
    ``feedgrid_outbox_backlog_messages`` is 0): a figure measured right after a bulk import
    would otherwise share the process with the relay publishing the import's feed documents.
    Returns the seconds waited."""
    began = time.monotonic()
    while scrape(url).get("feedgrid_outbox_backlog_messages", 0.0) != 0.0:
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"the outbox relay did not catch up within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - began


def agent_figure(samples: dict[str, float], name: str, agent: str) -> float:
    return samples.get(f'{name}{{agent="{agent}"}}', 0.0)


def counter_sum(samples: dict[str, float], name: str) -> float:
    """A metric summed over its labels (or its one sample when it has none)."""
    return sum(value for key, value in samples.items() if key == name or key.startswith(name + "{"))


def mediamtx_body(path: str, token: str) -> str:
    return json.dumps(
        {"user": "", "password": "", "token": token, "ip": "127.0.0.1", "action": "read",
         "path": path, "protocol": "rtsp", "id": str(uuid.uuid4()), "query": ""}
    )  # fmt: skip


async def postgres_statement(statement: str, database: str = "feedgrid") -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{database}")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def require_postgres(what: str, skip: str) -> None:
    """Exits with what to do when the PostgreSQL of ``FEEDGRID_TEST_POSTGRES`` does not answer:
    before the long parts of a run, not after them."""
    try:
        asyncio.run(postgres_statement("SELECT 1"))
    except (OSError, asyncpg.PostgresError) as error:
        raise SystemExit(
            f"PostgreSQL does not answer at {POSTGRES_ADMIN.split('@')[-1]} ({error}); it is "
            f"needed for {what}. Start it with `feedgrid postgres start` (./deploy/bench does), "
            f"or pass {skip}"
        ) from None


@dataclass
class PostgresDatabase:
    name: str

    @property
    def dsn(self) -> str:
        return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{self.name}"

    @property
    def sqlalchemy_url(self) -> str:
        return "postgresql+asyncpg://" + self.dsn.split("://", 1)[1]

    @classmethod
    def create(cls, prefix: str) -> PostgresDatabase:
        database = cls(f"{prefix}_{uuid.uuid4().hex[:8]}")
        asyncio.run(postgres_statement(f'CREATE DATABASE "{database.name}"'))
        return database

    def drop(self) -> None:
        asyncio.run(postgres_statement(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


@dataclass(frozen=True)
class Query:
    kind: str
    params: dict[str, Any]  # GET /v1/feeds parameters or the POST /v1/feeds/search body


def square(lon: float, lat: float, side_m: float) -> list[list[float]]:
    half = side_m / 2
    corners = [(-half, -half), (half, -half), (half, half), (-half, half), (-half, -half)]
    xs, ys = offset_points(
        np.full(5, lon),
        np.full(5, lat),
        np.array([c[0] for c in corners]),
        np.array([c[1] for c in corners]),
    )
    return [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)]


def make_queries(base: list[Feature], count: int, seed: int = 7) -> dict[str, list[Query]]:
    """Random queries placed where the city is (near real feeds and inside real views)."""
    rng = random.Random(seed)
    cameras = [f for f in base if f["properties"]["kind"] == "camera" and f["properties"]["fov"]]
    owners = sorted({f["properties"]["owner"] for f in base})
    tags = sorted({tag for f in base for tag in f["properties"]["tags"]})
    queries: dict[str, list[Query]] = {
        "near_500m": [],
        "sees": [],
        "polygon_10km2": [],
        "filtered_list": [],
    }
    for _ in range(count):
        lon, lat = rng.choice(base)["geometry"]["coordinates"]
        jitter_lon, jitter_lat = offset_points(
            np.array([lon]),
            np.array([lat]),
            np.array([rng.uniform(-200, 200)]),
            np.array([rng.uniform(-200, 200)]),
        )
        queries["near_500m"].append(
            Query("near", {"near": f"{jitter_lon[0]:.7f},{jitter_lat[0]:.7f},500"})
        )
        camera = rng.choice(cameras)
        fov = camera["properties"]["fov"]
        bearing = math.radians(fov["heading"] + rng.uniform(-0.4, 0.4) * min(fov["angle"], 359))
        reach = rng.uniform(0.1, 0.9) * fov["range_m"]
        clon, clat = camera["geometry"]["coordinates"]
        seen_lon, seen_lat = offset_points(
            np.array([clon]),
            np.array([clat]),
            np.array([reach * math.sin(bearing)]),
            np.array([reach * math.cos(bearing)]),
        )
        queries["sees"].append(Query("sees", {"sees": f"{seen_lon[0]:.7f},{seen_lat[0]:.7f}"}))
        plon, plat = rng.choice(base)["geometry"]["coordinates"]
        polygon = {"type": "Polygon", "coordinates": [square(plon, plat, math.sqrt(10e6))]}
        queries["polygon_10km2"].append(
            Query("polygon", {"geometry": polygon, "relation": "within"})
        )
        choices = {
            "department": rng.choice(owners),
            "kind": rng.choice(["camera", "sensor"]),
            "industry": rng.choice(["00", "01", "04", "05", "08", "09"]),
            "sharing": rng.choice(["unconditional", "conditional", "not_shared"]),
            "status": "unknown",
            "tag": rng.choice(tags),
        }
        picked = rng.sample(sorted(choices), rng.randint(2, 3))
        queries["filtered_list"].append(Query("list", {name: choices[name] for name in picked}))
    return queries
