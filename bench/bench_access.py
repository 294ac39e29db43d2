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

``--quick`` shortens every run (about a minute in all).
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
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


@contextmanager
def api_server(database_url: str, workdir: Path) -> Iterator[str]:
    port = free_port()
    env = dict(
        os.environ,
        FEEDGRID_DATABASE_URL=database_url,
        FEEDGRID_ADMIN_TOKEN=ADMIN_TOKEN,
        FEEDGRID_KAFKA_BOOTSTRAP=KAFKA,
        FEEDGRID_TOPIC_PREFIX=f"bench{uuid.uuid4().hex[:8]}.",
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
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
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
    url: str, path: str, key: str, bodies: Path, seconds: float, workdir: Path, rate: float = 0
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
            f"-c{CONNECTIONS}",
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
        ]
        generator = "asyncio open loop" if rate else "asyncio"
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(line for line in reversed(finished.stdout.splitlines()) if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    result["rps"] = result["requests"] / result["seconds"]
    result["generator"] = generator
    return result


async def _asyncio_load(
    url: str, path: str, key: str, bodies_file: str, seconds: float, rate: float
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
            index += CONNECTIONS
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

    await asyncio.gather(*(connection(offset) for offset in range(CONNECTIONS)))
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


def bench_hooks(quick: bool, workdir: Path) -> None:
    seconds = 5.0 if quick else 20.0
    database = f"sqlite+aiosqlite:///{workdir / 'hooks.db'}"
    upgrade_registry(database)
    with api_server(database, workdir) as url, progress_bar() as progress:
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
    with api_server(database, workdir / label) as url, progress_bar() as progress:
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
        target="<= 50 ms", met=_percentile(latencies, 0.95) <= 50,
        note="near selection, a policy decision per feed; the request, grants, 300 audit links "
        "and 300 outbox events in one transaction",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--load-generator"]:
        url, path, key, bodies, seconds, rate = arguments[1:7]
        asyncio.run(_asyncio_load(url, path, key, bodies, float(seconds), float(rate)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs: about a minute")
    args = parser.parse_args(arguments)
    with tempfile.TemporaryDirectory(prefix="feedgrid-bench-access-") as directory:
        workdir = Path(directory)
        bench_hooks(args.quick, workdir)
        bench_access_requests(
            args.quick, workdir, f"sqlite+aiosqlite:///{workdir / 'requests.db'}", "sqlite"
        )
        try:
            postgres = PostgresDatabase.create("bench_access")
        except OSError as error:
            console.print(
                f"[yellow]PostgreSQL not reachable, its figure is skipped: {error}[/yellow]"
            )
            return 0
        try:
            bench_access_requests(args.quick, workdir, postgres.sqlalchemy_url, "postgresql")
        finally:
            postgres.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
