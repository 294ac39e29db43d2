"""Access benchmark: media-server hook decisions, and access requests by spatial selection.

Prints one JSON line per figure on stdout (``{"name", "value", "unit", "baseline",
"baseline_value", "target", "met", ...}``); progress goes to stderr.

1. MediaMTX ``authMethod: http`` decisions over loopback: a real uvicorn process (the API as
   deployed, SQLite, outbox relay to the real broker) and a load generator in a separate
   process (wrk when installed, else a small asyncio HTTP/1.1 client). Baseline: a bare
   ``POST`` endpoint returning 200, added to the same app, with the same body and the same
   middleware, measured in the same run. Two hook figures: players presenting tokens again
   (the verified-signature cache hits) and every request a token never seen before.
   Afterwards the audit chain is verified: every decision was recorded.
2. ``POST /v1/access-requests`` for 100 feeds found by a ``near`` selection, decided by the
   policy and written (request, grants, audit chain, outbox) in one transaction; p50/p95 on
   SQLite and on PostgreSQL.
3. The demo city (``deploy/seed``, 60,000 feeds; 6,000 with ``--quick``) loaded into the API:
   access requests of the transport bureau for the 100 feeds nearest a central feed, one after
   another (p95 beside ``GET /healthz`` on the same server) and from 8 connections (requests/s
   beside a bare POST endpoint), each with the server's CPU time per request (steadier than
   the clock on a shared machine); owners approving and denying, and requesters revoking, 100
   feeds at once; then ``deploy/demo_traffic.py`` replaying every seeded request (100 with
   ``--quick``) as ``./deploy/up`` does. ``--profile DIR`` samples the server with py-spy
   during these runs (collapsed stacks in DIR, a summary on stderr).

4. ``up-replay``: the same replay where the target puts it, in ``feedgrid up``'s first start
   with the demo (every role in one process, the demo gateways bringing the city online
   beside it), with the process's background loops giving way to requests in flight (the
   default) beside the same start where they never do (``FEEDGRID_BACKGROUND_SHARE=1``),
   alternated ``--rounds`` times; each start takes about three minutes.

``--quick`` shortens every run (a few minutes in all); ``--only`` picks parts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Response

from bench.common import (
    ADMIN_TOKEN,
    KAFKA,
    PostgresDatabase,
    console,
    emit,
    free_port,
    mediamtx_body,
    progress_bar,
    relay_caught_up,
    require_kafka,
    scrape,
    stop_cleanly_on_sigterm,
    topic_prefix,
)
from registry_api.migrate import upgrade_registry

HOOK_PATH = "/v1/hooks/mediamtx/auth"
BARE_PATH = "/bench/bare"
OWNER, REQUESTER = "bench-owner", "bench-user"
CENTRE = (103.8343, 36.0611)
FEEDS = 150
CONNECTIONS = 16


def bench_app() -> FastAPI:
    """The API exactly as deployed, plus the bare baseline endpoint (``uvicorn --factory``)."""
    from registry_api.app import create_app

    app = create_app()

    @app.post(BARE_PATH, include_in_schema=False)
    async def bare() -> Response:
        return Response(status_code=200)

    return app


# ------------------------------------------------------------------------------ the server


@dataclass(frozen=True)
class ApiServer:
    url: str
    pid: int


@contextmanager
def api_server(database_url: str, workdir: Path) -> Iterator[ApiServer]:
    port = free_port()
    env = dict(
        os.environ,
        FEEDGRID_DATABASE_URL=database_url,
        FEEDGRID_ADMIN_TOKEN=ADMIN_TOKEN,
        FEEDGRID_KAFKA_BOOTSTRAP=KAFKA,
        FEEDGRID_TOPIC_PREFIX=topic_prefix(),
        FEEDGRID_EMBEDDED_WORKER="false",
        FEEDGRID_CLICKHOUSE_URL=f"chdb://{workdir / 'analytics'}",
        FEEDGRID_VAR_DIR=str(workdir / "var"),
        FEEDGRID_SIGNING_KEY_DIR=str(workdir / "keys"),
        FEEDGRID_LOG_LEVEL="WARNING",
        # The benchmark drives one identity far past the per-identity limits on purpose.
        FEEDGRID_RATE_LIMIT_HOOKS_PER_SECOND="1000000",
        FEEDGRID_RATE_LIMIT_HOOKS_BURST="1000000",
        FEEDGRID_RATE_LIMIT_REQUESTS_PER_SECOND="100000",
        FEEDGRID_RATE_LIMIT_REQUESTS_BURST="100000",
    )
    command = [
        sys.executable, "-m", "uvicorn", "bench.bench_access:bench_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API process exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API process did not come up")
            time.sleep(0.2)
        yield ApiServer(url, process.pid)
    finally:
        if process.poll() is None:
            # SIGINT, not SIGTERM: uvicorn ends by raising the signal again, and only an
            # interrupt lets the exit handlers run (the bulk-validation helper's pool is shut
            # down there; killed by SIGTERM its semaphores were reported leaked).
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# ------------------------------------------------------------------------------ the data


def camera(serial: int) -> dict[str, Any]:
    rng = random.Random(serial)
    code = f"62010000041322{serial:06d}"
    conditional = serial % 3 == 0
    sharing: dict[str, Any] = (
        {
            "class": "conditional",
            "conditions": {
                "departments": [REQUESTER],
                "purposes": ["traffic management"],
                "actions": ["live", "snapshot"],
                "max_duration_minutes": 240,
            },
        }
        if conditional
        else {"class": "unconditional"}
    )
    return {
        "kind": "camera",
        "code": code,
        "owner": OWNER,
        "name": f"Bench camera {serial}",
        "location": {
            "type": "Point",
            "coordinates": [
                CENTRE[0] + rng.uniform(-0.004, 0.004),
                CENTRE[1] + rng.uniform(-0.003, 0.003),
            ],
        },
        "fov": {"heading": rng.uniform(0, 359), "angle": 60.0, "range_m": 80.0},
        "stream": {
            "protocol": "rtsp",
            "url": f"rtsp://10.14.0.{serial % 250 + 1}:554/ch{serial}",
            "media_path": f"{OWNER}/{code}",
        },
        "sharing": sharing,
    }  # fmt: skip


def setup(url: str) -> dict[str, str]:
    """Departments, a requester key and a gateway key, and FEEDS cameras around the centre."""
    keys: dict[str, str] = {}
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as http:
        for code, kind in ((OWNER, "transport"), (REQUESTER, "urban_management")):
            http.post(
                "/v1/departments", json={"code": code, "name": code, "kind": kind}
            ).raise_for_status()
        for department, role in ((REQUESTER, "requester"), (OWNER, "gateway")):
            issued = http.post(
                f"/v1/departments/{department}/api-keys", json={"name": role, "roles": [role]}
            )
            issued.raise_for_status()
            keys[role] = issued.json()["key"]
        for serial in range(1, FEEDS + 1):
            http.post("/v1/feeds", json=camera(serial)).raise_for_status()
    return keys


def request_body(feeds: int) -> dict[str, Any]:
    return {
        "selection": {"near": f"{CENTRE[0]},{CENTRE[1]},2000", "kind": "camera", "limit": feeds},
        "purpose": "traffic management",
        "actions": ["live"],
        "duration_minutes": 120,
    }


def hook_tokens(url: str, keys: dict[str, str], rounds: int) -> list[tuple[str, str]]:
    """(gateway path, token) pairs: ``rounds`` retrieval calls over one grant of every feed."""
    headers = {"Authorization": f"Bearer {keys['requester']}"}
    pairs: list[tuple[str, str]] = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        answer = http.post("/v1/access-requests", json=request_body(FEEDS))
        answer.raise_for_status()
        grants = {item["grant_id"] for item in answer.json()["feeds"] if item["grant_id"]}
        for _ in range(rounds):
            for grant_id in grants:
                retrieval = http.get(f"/v1/grants/{grant_id}/retrieval")
                retrieval.raise_for_status()
                pairs.extend(
                    (feed["media_path"], feed["token"]) for feed in retrieval.json()["feeds"]
                )
    return pairs


# ------------------------------------------------------------------------------ load generation

WRK_SCRIPT = """
local bodies = {}
local index = 0
local file = io.open(os.getenv("BENCH_BODIES"), "r")
for line in file:lines() do bodies[#bodies + 1] = line end
file:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
request = function()
  index = index % #bodies + 1
  return wrk.format(nil, os.getenv("BENCH_PATH"), nil, bodies[index])
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, '
    .. '"non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
"""


def run_load(
    url: str,
    path: str,
    key: str,
    bodies: Path,
    seconds: float,
    workdir: Path,
    rate: float = 0,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """Load from another process; returns requests/s, p50, p99 and errors. Closed loop with
    wrk when installed (saturation); open loop at ``rate`` with the asyncio generator."""
    env = dict(os.environ, BENCH_BODIES=str(bodies), BENCH_KEY=key, BENCH_PATH=path)
    if shutil.which("wrk") and rate == 0:
        script = workdir / "hook.lua"
        script.write_text(WRK_SCRIPT)
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        generator = "wrk"
    else:
        command = [
            sys.executable,
            "-m",
            "bench.bench_access",
            "--load-generator",
            url,
            path,
            key,
            str(bodies),
            str(seconds),
            str(rate),
            str(connections),
        ]
        generator = "asyncio open loop" if rate else "asyncio"
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(line for line in reversed(finished.stdout.splitlines()) if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    result["rps"] = result["requests"] / result["seconds"]
    result["generator"] = generator
    return result


async def _asyncio_load(
    url: str, path: str, key: str, bodies_file: str, seconds: float, rate: float, connections: int
) -> None:
    """Keep-alive HTTP/1.1 over raw sockets from CONNECTIONS connections. ``rate`` > 0: open
    loop, request i due at i/rate and its latency counted from then (so a stalled server is
    not hidden by a waiting client); 0: closed loop, each connection sends when answered."""
    host, port = url.removeprefix("http://").split(":")
    bodies = [line.encode() for line in Path(bodies_file).read_text().splitlines() if line]
    latencies: list[float] = []
    counts = {"non_2xx": 0, "socket_errors": 0}
    began = time.perf_counter()
    stop = began + seconds
    total = int(rate * seconds) if rate > 0 else None

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        index = offset
        while True:
            if total is not None:
                if index >= total:
                    break
                due = began + index / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                due = time.perf_counter()
                if due >= stop:
                    break
            body = bodies[index % len(bodies)]
            index += connections
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            if not status_line.split(b" ")[1].startswith(b"2"):
                counts["non_2xx"] += 1
        writer.close()

    await asyncio.gather(*(connection(offset) for offset in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    print(json.dumps({
        "requests": len(latencies), "seconds": elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, **counts,
    }))  # fmt: skip


def write_bodies(pairs: list[tuple[str, str]], target: Path) -> Path:
    target.write_text("\n".join(mediamtx_body(path, token) for path, token in pairs) + "\n")
    return target


def verify_audit(url: str) -> dict[str, Any]:
    """Waits for the batched hook events, then recomputes the whole audit chain."""
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=600
    ) as http:
        time.sleep(1.0)
        return http.get("/v1/audit/verify").json()  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ the benchmarks


TARGET_RATE = 2000.0
PARTS = ("demo-city", "hooks", "requests", "up-replay")


def bench_hooks(quick: bool, workdir: Path) -> None:
    seconds = 5.0 if quick else 20.0
    database = f"sqlite+aiosqlite:///{workdir / 'hooks.db'}"
    upgrade_registry(database)
    with api_server(database, workdir) as api, progress_bar() as progress:
        url = api.url
        task = progress.add_task("hook benchmark", total=9)
        keys = setup(url)
        progress.advance(task)
        # Tokens a player presents again, and two sets of tokens each presented once.
        repeat = write_bodies(hook_tokens(url, keys, rounds=1), workdir / "repeat.ndjson")
        rounds = int(TARGET_RATE * seconds / FEEDS) + 1
        saturation_fresh = write_bodies(
            hook_tokens(url, keys, rounds=2 * rounds), workdir / "fresh1.ndjson"
        )
        paced_fresh = write_bodies(hook_tokens(url, keys, rounds=rounds), workdir / "fresh2.ndjson")
        progress.advance(task)
        gateway = keys["gateway"]
        run_load(url, BARE_PATH, gateway, repeat, 2, workdir)  # warm-up
        run_load(url, HOOK_PATH, gateway, repeat, 2, workdir)
        progress.advance(task)
        bare = run_load(url, BARE_PATH, gateway, repeat, seconds, workdir)
        progress.advance(task)
        hooks = run_load(url, HOOK_PATH, gateway, repeat, seconds, workdir)
        progress.advance(task)
        fresh_seconds = min(seconds, 2 * rounds * FEEDS / max(hooks["rps"], 1) * 0.9)
        cold = run_load(url, HOOK_PATH, gateway, saturation_fresh, fresh_seconds, workdir)
        progress.advance(task)
        bare_paced = run_load(url, BARE_PATH, gateway, repeat, seconds, workdir, rate=TARGET_RATE)
        hooks_paced = run_load(url, HOOK_PATH, gateway, repeat, seconds, workdir, rate=TARGET_RATE)
        progress.advance(task)
        cold_paced = run_load(
            url, HOOK_PATH, gateway, paced_fresh, seconds, workdir, rate=TARGET_RATE
        )
        progress.advance(task)
        audit = verify_audit(url)
        progress.advance(task)
    ratio = hooks["rps"] / bare["rps"]
    server = {
        "server": "1 uvicorn process, SQLite, outbox relay to Kafka on",
        "machine_cores": os.cpu_count(),
    }
    saturation = {
        "generator": hooks["generator"],
        "connections": CONNECTIONS,
        "seconds": seconds,
        **server,
    }
    paced = {
        "generator": hooks_paced["generator"],
        "offered_rate": TARGET_RATE,
        "connections": CONNECTIONS,
        "seconds": seconds,
        **server,
    }
    errors = sum(
        run["non_2xx"] + run["socket_errors"] for run in (hooks, cold, hooks_paced, cold_paced)
    )
    emit(
        "hook_decisions_per_second", hooks["rps"], "decisions/s",
        baseline="bare POST endpoint, same server, same load", baseline_value=round(bare["rps"], 1),
        ratio=round(ratio, 3), target=">= 2000/s and >= 0.6x baseline",
        met=hooks["rps"] >= 2000 and ratio >= 0.6, p99_ms_at_saturation=round(hooks["p99_ms"], 2),
        baseline_p99_ms_at_saturation=round(bare["p99_ms"], 2), non_2xx=errors, **saturation,
    )  # fmt: skip
    emit(
        "hook_decision_p99_at_2000_per_second", hooks_paced["p99_ms"], "ms",
        baseline="bare POST endpoint p99 at the same rate",
        baseline_value=round(bare_paced["p99_ms"], 3),
        p50_ms=round(hooks_paced["p50_ms"], 3), achieved_rate=round(hooks_paced["rps"], 1),
        target="<= 15 ms", met=hooks_paced["p99_ms"] <= 15, **paced,
    )  # fmt: skip
    emit(
        "hook_decisions_per_second_new_tokens", cold["rps"], "decisions/s",
        baseline="bare POST endpoint, same server, same load", baseline_value=round(bare["rps"], 1),
        ratio=round(cold["rps"] / bare["rps"], 3), target=">= 2000/s", met=cold["rps"] >= 2000,
        note="every request a token never presented before (Ed25519 verified each time)",
        **saturation | {"seconds": round(fresh_seconds, 1)},
    )  # fmt: skip
    emit(
        "hook_decision_p99_at_2000_per_second_new_tokens", cold_paced["p99_ms"], "ms",
        p50_ms=round(cold_paced["p50_ms"], 3), achieved_rate=round(cold_paced["rps"], 1),
        target="<= 15 ms", met=cold_paced["p99_ms"] <= 15, **paced,
    )  # fmt: skip
    emit(
        "hook_decisions_audited", audit.get("entries_checked", 0), "audit entries",
        target="chain verifies", met=bool(audit.get("ok")),
        note="the whole audit chain recomputed after the load: every decision was written",
    )  # fmt: skip


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def bench_access_requests(quick: bool, workdir: Path, database: str, label: str) -> None:
    runs = 20 if quick else 100
    upgrade_registry(database)
    with api_server(database, workdir / label) as server, progress_bar() as progress:
        url = server.url
        keys = setup(url)
        task = progress.add_task(f"access requests ({label})", total=runs + 3)
        latencies: list[float] = []
        headers = {"Authorization": f"Bearer {keys['requester']}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            for attempt in range(runs + 3):
                started = time.perf_counter()
                answer = http.post("/v1/access-requests", json=request_body(100))
                elapsed = time.perf_counter() - started
                answer.raise_for_status()
                assert len(answer.json()["feeds"]) == 100
                if attempt >= 3:  # warm-up
                    latencies.append(elapsed * 1000)
                progress.advance(task)
    emit(
        f"access_request_100_feeds_spatial_p95_{label}", _percentile(latencies, 0.95), "ms",
        p50_ms=round(statistics.median(latencies), 3), runs=runs, feeds_per_request=100,
        target="<= 20 ms", met=_percentile(latencies, 0.95) <= 20,
        note="near selection, a policy decision per feed; the request, grants, 300 audit links "
        "and 300 outbox events in one transaction",
    )  # fmt: skip


# ------------------------------------------------------------------------------ the demo city

DEMO_REQUESTER = "lz-tb"  # the transport bureau, whose key the issue's measurements used
DEMO_FEEDS = 100
DEMO_CONNECTIONS = 8
DEMO_RADIUS_M = 1500
DEMO_PLACES_KM = 4.0  # request centres: feeds within this distance of the city centre


@dataclass(frozen=True)
class DemoCity:
    directory: Path
    feeds: int
    # (owner, lon, lat) of every feed, from the generated file
    places: list[tuple[str, float, float]]


def write_city(quick: bool, workdir: Path) -> DemoCity:
    """The demo city of ``./deploy/up`` (60,000 feeds; 6,000 in quick mode), its 2,000 seeded
    access requests included."""
    from deploy.seed.writer import write_demo_city

    directory = workdir / "demo"
    cameras, sensors = (5_700, 300) if quick else (57_000, 3_000)
    write_demo_city(directory, cameras=cameras, sensors=sensors, progress=False)
    places = []
    with (directory / "feeds.ndjson").open("rb") as lines:
        for line in lines:
            feature = orjson.loads(line)
            lon, lat = feature["geometry"]["coordinates"][:2]
            places.append((feature["properties"]["owner"], float(lon), float(lat)))
    return DemoCity(directory, cameras + sensors, places)


def demo_request_bodies(city: DemoCity, count: int, seed: int = 13) -> list[dict[str, Any]]:
    """Requests for the ``DEMO_FEEDS`` feeds nearest to a feed of the city centre."""
    rng = random.Random(seed)
    degrees = DEMO_PLACES_KM / 100.0
    central = [
        (lon, lat)
        for _, lon, lat in city.places
        if abs(lon - CENTRE[0]) < degrees and abs(lat - CENTRE[1]) < degrees
    ]
    purposes = ("traffic management", "public safety", "emergency response", "city management")
    return [
        {
            "selection": {"near": f"{lon:.6f},{lat:.6f},{DEMO_RADIUS_M}", "limit": DEMO_FEEDS},
            "purpose": rng.choice(purposes),
            "actions": ["live"],
            "duration_minutes": rng.choice((30, 60, 120)),
        }
        for lon, lat in rng.sample(central, min(count, len(central)))
    ]


def issue_key(http: httpx.Client, department: str, role: str) -> str:
    issued = http.post(
        f"/v1/departments/{department}/api-keys", json={"name": f"bench {role}", "roles": [role]}
    )
    issued.raise_for_status()
    return str(issued.json()["key"])


def sequential_ms(
    http: httpx.Client, calls: list[tuple[str, str, dict[str, Any] | None]]
) -> list[float]:
    """Milliseconds of each call, one after another; every answer must be a 2xx."""
    latencies = []
    for method, path, body in calls:
        started = time.perf_counter()
        answer = http.request(method, path, json=body)
        latencies.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return latencies


@contextmanager
def profiled(pid: int, target: Path | None, label: str) -> Iterator[None]:
    """py-spy samples the server while the block runs (``--profile DIR``): collapsed stacks in
    DIR/<label>.txt (flamegraph.pl or speedscope read them) and a summary on stderr."""
    if target is None:
        yield
        return
    target.mkdir(parents=True, exist_ok=True)
    output = target / f"{label}.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    recorder = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--nonblocking",
         "--gil", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
        if output.exists():
            console.print(f"[bold]{label}[/bold]: profile in {output}")
            console.print(profile_summary(output))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) the process has used so far: on a busy machine
    a steadier measure of the work per request than the wall clock."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_summary(collapsed: Path, top: int = 25) -> str:
    """The functions holding the most samples (inclusive and self), from collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{total} samples"]
    for title, table in (("inclusive", inclusive), ("self", own)):
        lines.append(f"-- {title}")
        for frame, count in sorted(table.items(), key=lambda item: -item[1])[:top]:
            lines.append(f"{100 * count / max(total, 1):5.1f}%  {frame[:150]}")
    return "\n".join(lines)


def bench_demo_city(quick: bool, workdir: Path, profile: Path | None) -> None:
    """Access requests for 100 feeds by spatial selection against the demo city: sequential
    latency and throughput at 8 connections; owners' decisions and revocations of 100 feeds;
    then the demo's replay of its seeded requests."""
    from deploy.seed.cli import load_into_api

    city = write_city(quick, workdir)
    database = f"sqlite+aiosqlite:///{workdir / 'demo-city.db'}"
    upgrade_registry(database)
    runs = 20 if quick else 200
    seconds = 5.0 if quick else 20.0
    with api_server(database, workdir / "demo-city") as server, progress_bar() as progress:
        task = progress.add_task("access requests (demo city)", total=6)
        url = server.url
        load_into_api(city.directory, url, ADMIN_TOKEN)
        progress.advance(task)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120
        ) as admin:
            requester = issue_key(admin, DEMO_REQUESTER, "requester")
            owner_keys = {
                owner: issue_key(admin, owner, "dept_admin")
                for owner in sorted({owner for owner, _, _ in city.places})
            }
        bodies = demo_request_bodies(city, runs + 5)
        headers = {"Authorization": f"Bearer {requester}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            warm = [http.post("/v1/access-requests", json=body) for body in bodies[:5]]
            for answer in warm:
                answer.raise_for_status()
                assert len(answer.json()["feeds"]) == DEMO_FEEDS, answer.json()["counts"]
            # measured once the relay has published the city's 60,000 feed documents
            relay_waited = relay_caught_up(url)
            sequential_ms(http, [("GET", "/healthz", None)] * 50)
            health = sequential_ms(http, [("GET", "/healthz", None)] * runs)
            with profiled(server.pid, profile, "access_request_sequential"):
                cpu_before = cpu_seconds(server.pid)
                latencies = sequential_ms(
                    http, [("POST", "/v1/access-requests", body) for body in bodies[5:]]
                )
                cpu_per_request = (cpu_seconds(server.pid) - cpu_before) / len(latencies)
        progress.advance(task)
        bodies_file = workdir / "demo-requests.ndjson"
        bodies_file.write_text(
            "\n".join(orjson.dumps(body).decode() for body in demo_request_bodies(city, 400, 14))
            + "\n"
        )
        bare = run_load(
            url, BARE_PATH, requester, bodies_file, seconds, workdir, connections=DEMO_CONNECTIONS
        )
        with profiled(server.pid, profile, "access_request_8_connections"):
            cpu_before = cpu_seconds(server.pid)
            loaded = run_load(
                url, "/v1/access-requests", requester, bodies_file, seconds, workdir,
                connections=DEMO_CONNECTIONS,
            )  # fmt: skip
            loaded_cpu = (cpu_seconds(server.pid) - cpu_before) / max(loaded["requests"], 1)
        progress.advance(task)
        with profiled(server.pid, profile, "owner_decisions"):
            decisions = owner_decision_times(url, city, requester, owner_keys, 5 if quick else 30)
        progress.advance(task)
        replay_requests = 100 if quick else 0
        with profiled(server.pid, profile, "demo_replay"):
            began = time.perf_counter()
            summary = asyncio.run(replay(url, city.directory, replay_requests))
            replay_seconds = time.perf_counter() - began
        progress.advance(task)
        audit = verify_audit(url)
        progress.advance(task)
    server_note = {
        "server": "1 uvicorn process, SQLite, outbox relay to Kafka on, no embedded worker",
        "machine_cores": os.cpu_count(),
        "feeds_in_city": city.feeds,
        "requester": DEMO_REQUESTER,
    }
    p95 = _percentile(latencies, 0.95)
    emit(
        "access_request_100_feeds_demo_city_p95", p95, "ms",
        baseline="GET /healthz p95, same server, sequential",
        baseline_value=round(_percentile(health, 0.95), 3),
        p50_ms=round(statistics.median(latencies), 3),
        p99_ms=round(_percentile(latencies, 0.99), 3),
        server_cpu_ms_per_request=round(cpu_per_request * 1000, 3),
        runs=len(latencies), feeds_per_request=DEMO_FEEDS, target="<= 20 ms", met=p95 <= 20,
        note=f"near {DEMO_RADIUS_M} m of a central feed, limit {DEMO_FEEDS}; sequential; the "
        "request, its grants, decisions, audit links and outbox events in one transaction; "
        "measured once the relay had published the city's import",
        relay_caught_up_after_s=round(relay_waited, 1),
        **server_note,
    )  # fmt: skip
    errors = loaded["non_2xx"] + loaded["socket_errors"]
    emit(
        "access_requests_100_feeds_demo_city_per_second", loaded["rps"], "requests/s",
        baseline=f"bare POST endpoint, same server, {DEMO_CONNECTIONS} connections",
        baseline_value=round(bare["rps"], 1), ratio=round(loaded["rps"] / bare["rps"], 3),
        p50_ms=round(loaded["p50_ms"], 3), p99_ms=round(loaded["p99_ms"], 3),
        connections=DEMO_CONNECTIONS, seconds=seconds, generator=loaded["generator"],
        server_cpu_ms_per_request=round(loaded_cpu * 1000, 3),
        non_2xx=errors, target=">= 100/s at 8 connections, no errors",
        met=loaded["rps"] >= 100 and errors == 0, **server_note,
    )  # fmt: skip
    for name, values in decisions.items():
        emit(
            f"{name}_100_feeds_demo_city_p95", _percentile(values, 0.95), "ms",
            baseline="access request for 100 feeds p95, same server",
            baseline_value=round(p95, 3), p50_ms=round(statistics.median(values), 3),
            runs=len(values), target="<= 20 ms", met=_percentile(values, 0.95) <= 20,
            **server_note,
        )  # fmt: skip
    emit(
        "demo_replay_seconds", replay_seconds, "s",
        baseline="60 s budget of ./deploy/up", baseline_value=60.0,
        requests=summary.requests, lines=summary.lines, replayed_lines=summary.replayed_lines,
        api_errors=summary.errors, grants=summary.grants, retrievals=summary.retrievals,
        phase_seconds=summary.phase_seconds,
        target="<= 60 s for all 2,000 requests" if not quick else "smoke run",
        met=replay_seconds <= 60 and summary.errors == 0 and not quick,
        note="deploy/demo_traffic.py replaying every seeded request (owners' answers, tokens, "
        "hook checks included) against this server; ./deploy/up also runs the stream worker "
        "in the same process",
        **server_note,
    )  # fmt: skip
    emit(
        "demo_city_access_audited", audit.get("entries_checked", 0), "audit entries",
        target="chain verifies", met=bool(audit.get("ok")),
    )  # fmt: skip


async def replay(url: str, directory: Path, max_requests: int) -> Any:
    """The demo's replay, as ``./deploy/up`` runs it, of ``max_requests`` requests (0: all).
    (TrafficReplay itself: replay_demo_traffic() does not pass its max_requests on.)"""
    from deploy.demo_traffic import DEFAULT_CONCURRENCY, TrafficReplay

    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=httpx.Timeout(120.0, connect=10.0),
        limits=httpx.Limits(max_connections=DEFAULT_CONCURRENCY * 2),
    ) as client:
        return await TrafficReplay(client, directory, max_requests=max_requests).run()


def up_replay(workdir: Path, quick: bool, share: str) -> dict[str, Any]:
    """One first start of ``feedgrid up`` with the demo, as a new user's ``./deploy/up`` runs
    it (the broker aside): the city loaded, its gateways bringing it online while the 2,000
    requests are replayed, every role in the one process; with ``FEEDGRID_BACKGROUND_SHARE``
    at ``share``. Returns what the replay's marker says and what the process says after."""
    from bench.bench_load import FeedGridUp
    from deploy.seed.writer import write_demo_city

    workdir.mkdir(parents=True, exist_ok=True)
    server = FeedGridUp(workdir, 3600, extra_env={"FEEDGRID_BACKGROUND_SHARE": share})
    if quick:  # otherwise up generates its own city, as on a first ./deploy/up
        write_demo_city(server.demo_dir, cameras=5_700, sensors=300, requests=120, progress=False)
    try:
        server.start(load_deadline_s=900)
        (marker,) = server.demo_dir.glob(".traffic-*")
        replay = orjson.loads(marker.read_bytes())
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        samples = scrape(server.url)
    finally:
        server.stop()
    paused_by_loop = 'feedgrid_background_paused_seconds_total{loop="'
    paused = {
        key[len(paused_by_loop) : -len('"}')]: round(value, 1)
        for key, value in samples.items()
        if key.startswith(paused_by_loop)
    }
    return {
        "seconds": float(replay["elapsed_seconds"]),
        "errors": int(replay["errors"]),
        "requests": int(replay["requests"]),
        "phase_seconds": replay["phase_seconds"],
        "paused_seconds": paused,
        "stream_lag_after": ready["checks"]["stream-worker"]["detail"]["lag"],
    }


def bench_up_replay(quick: bool, workdir: Path, rounds: int) -> None:
    """The replay in ``./deploy/up`` itself, the target's own setting (``demo_replay_seconds``
    replays against a bare API process): ``rounds`` first starts with the background loops
    giving way to requests (the default share, 0.5) alternating with as many where they
    never do (share 1, as before 2026-12-06 late evening), each from an empty directory."""
    runs: dict[str, list[dict[str, Any]]] = {"0.5": [], "1": []}
    for round_number in range(rounds):
        for share in ("1", "0.5") if round_number % 2 == 0 else ("0.5", "1"):
            console.print(f"feedgrid up, first start, background share {share}")
            run = up_replay(workdir / f"up-{round_number}-{share}", quick, share)
            console.print(f"  replayed in {run['seconds']:.1f} s {run['phase_seconds']}")
            runs[share].append(run)
    giving, keeping = runs["0.5"], runs["1"]
    value = statistics.median(run["seconds"] for run in giving)
    errors = sum(run["errors"] for run in giving + keeping)
    emit(
        "demo_replay_seconds_all_in_one", value, "s",
        baseline="the same first start with the background never giving way "
        "(FEEDGRID_BACKGROUND_SHARE=1), median, alternated in the same run",
        baseline_value=round(statistics.median(run["seconds"] for run in keeping), 2),
        runs=[round(run["seconds"], 2) for run in giving],
        baseline_runs=[round(run["seconds"], 2) for run in keeping],
        phase_seconds=[run["phase_seconds"] for run in giving],
        baseline_phase_seconds=[run["phase_seconds"] for run in keeping],
        paused_seconds=[run["paused_seconds"] for run in giving],
        stream_lag_after=[run["stream_lag_after"] for run in giving],
        requests=giving[0]["requests"], api_errors=errors,
        target="<= 60 s for all 2,000 requests" if not quick else "smoke run",
        met=value <= 60 and errors == 0 and not quick,
        server="feedgrid up --no-kafka, first start from an empty directory (API, relay, "
        "embedded worker, chdb, the demo gateways' first round beside the replay), not pinned",
        machine_cores=os.cpu_count(), machine_load_average_1min=round(os.getloadavg()[0], 2),
    )  # fmt: skip


def owner_decision_times(
    url: str, city: DemoCity, requester: str, owner_keys: dict[str, str], runs: int
) -> dict[str, list[float]]:
    """Milliseconds of an owner approving, an owner denying, and a requester revoking, each
    for 100 feeds of one owner at once (conditional feeds asked for a purpose outside their
    conditions wait for the owner; the approval's grant is then revoked)."""
    owner = "lz-psb"
    rng = random.Random(15)
    degrees = DEMO_PLACES_KM / 100.0
    spots = [
        (lon, lat)
        for place_owner, lon, lat in city.places
        if place_owner == owner
        and abs(lon - CENTRE[0]) < degrees
        and abs(lat - CENTRE[1]) < degrees
    ]
    times: dict[str, list[float]] = {
        "owner_approval": [],
        "owner_denial": [],
        "grant_revocation": [],
    }
    asking = {"Authorization": f"Bearer {requester}"}
    deciding = {"Authorization": f"Bearer {owner_keys[owner]}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        for attempt in range(2 * runs + 2):
            lon, lat = rng.choice(spots)
            body = {
                "selection": {
                    "near": f"{lon:.6f},{lat:.6f},5000", "department": owner,
                    "sharing": "conditional", "limit": DEMO_FEEDS,
                },
                "purpose": "environmental monitoring", "actions": ["live"], "duration_minutes": 60,
            }  # fmt: skip
            asked = http.post("/v1/access-requests", json=body, headers=asking)
            asked.raise_for_status()
            request_id = asked.json()["id"]
            verb = "approve" if attempt % 2 == 0 else "deny"
            started = time.perf_counter()
            answer = http.post(
                f"/v1/access-requests/{request_id}/{verb}", json={}, headers=deciding
            )
            elapsed = (time.perf_counter() - started) * 1000
            answer.raise_for_status()
            if attempt >= 2:
                times["owner_approval" if verb == "approve" else "owner_denial"].append(elapsed)
            if verb == "approve":
                grants = {item["grant_id"] for item in answer.json()["feeds"] if item["grant_id"]}
                for grant_id in grants:
                    started = time.perf_counter()
                    revoked = http.post(
                        f"/v1/grants/{grant_id}/revoke", json={"reason": "bench"}, headers=asking
                    )
                    elapsed = (time.perf_counter() - started) * 1000
                    revoked.raise_for_status()
                    if attempt >= 2:
                        times["grant_revocation"].append(elapsed)
    return times


def main(argv: list[str] | None = None) -> int:
    stop_cleanly_on_sigterm()
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--load-generator"]:
        url, path, key, bodies, seconds, rate, connections = arguments[1:8]
        asyncio.run(
            _asyncio_load(url, path, key, bodies, float(seconds), float(rate), int(connections))
        )
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs: about a minute")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="run only these parts (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="up-replay: first starts of feedgrid up in each setting, alternated (default 1)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the server with py-spy during the demo-city runs; collapsed stacks in DIR",
    )
    args = parser.parse_args(arguments)
    require_kafka()
    with tempfile.TemporaryDirectory(prefix="feedgrid-bench-access-") as directory:
        workdir = Path(directory)
        if "demo-city" in args.only:
            bench_demo_city(args.quick, workdir, args.profile)
        if "hooks" in args.only:
            bench_hooks(args.quick, workdir)
        if "requests" in args.only:
            bench_requests(args.quick, workdir)
        if "up-replay" in args.only:
            bench_up_replay(args.quick, workdir, max(1, args.rounds))
    return 0


def bench_requests(quick: bool, workdir: Path) -> None:
    """Part 2 on SQLite, then on PostgreSQL when its cluster answers."""
    bench_access_requests(
        quick, workdir, f"sqlite+aiosqlite:///{workdir / 'requests.db'}", "sqlite"
    )
    try:
        postgres = PostgresDatabase.create("bench_access")
    except OSError as error:
        console.print(f"[yellow]PostgreSQL not reachable, its figure is skipped: {error}[/yellow]")
        return
    try:
        bench_access_requests(quick, workdir, postgres.sqlalchemy_url, "postgresql")
    finally:
        postgres.drop()


if __name__ == "__main__":
    sys.exit(main())
