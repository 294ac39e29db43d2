"""Mixed load: searches, access requests, hook checks and heartbeats at a steady rate.

Prints one JSON line per figure on stdout (``{"name", "value", "unit", "baseline",
"baseline_value", "target", "met", ...}``); progress goes to stderr.

The server is the real all-in-one ``feedgrid up`` (``python -m deploy.cli up``): one process
with the API, the outbox relay, the embedded Faust worker and the chdb analytics store, on
SQLite, against the local Kafka broker. It loads the demo city (``deploy.seed``, written
beforehand into its ``var/demo``) through its own start-up path. The API and the worker share
that process, so their resident memory is one figure (plus the bulk-validation helper child).

The load comes from a second process on loopback (``--load-generator``): an open-loop
generator that sends request ``i`` at ``t0 + i / rate`` whatever happened to earlier ones,
over a pool of keep-alive HTTP/1.1 connections, and counts each latency from the moment the
request was due (a stalled server is not hidden by a waiting client). The mix:

- searches (``GET /v1/feeds`` with ``near``, ``sees``, ``bbox`` or attribute filters, and
  ``POST /v1/feeds/search`` with a 10 km2 polygon), by requesters of every department;
- access requests (``POST /v1/access-requests``) replaying the demo city's request stream
  (``deploy/seed/traffic.py``): named feeds or a ``near`` selection of at most 20 feeds;
- hook checks from the three media servers (MediaMTX ``auth``, ZLMediaKit ``on_play`` /
  ``on_flow_report``, nginx-rtmp ``on_play`` / ``on_play_done``) with valid retrieval tokens;
  sessions are opened and later closed, a few hundred open at any time;
- heartbeats (``POST /v1/heartbeats``) from each owner department's gateway, 20 feeds a batch.

A warm-up at the same rate comes first and is not counted; the resident memory is read after
it and at the end. Errors: any answer other than the expected 2xx (and, for ZLMediaKit,
``"code": 0``; for heartbeats, nothing rejected), timeouts and socket errors; 429 answers are
counted apart (the load stays under the per-identity limits, so none are expected).

Baselines are in-run comparisons: a throughput is set against the offered rate, a latency
against the same figure in the first measured minute (drift over the run), the resident memory
at the end against the same process after the warm-up.

Defaults: 50 requests/s (what this 2-core machine sustains with the server, the generator and
nothing else; see DEFAULT_RATE), 60 s of warm-up, 600 s measured, the full demo city (60,000
feeds). ``--quick`` is a smoke run of about a minute and a half (6,000 feeds, 25 requests/s,
30 s measured).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import orjson

from bench.common import (
    ADMIN_TOKEN,
    KAFKA,
    console,
    emit,
    free_port,
    make_queries,
    mediamtx_body,
    proc_status,
    progress_bar,
)

Feature = dict[str, Any]

# Share of each operation kind in the load, and of each variant within its kind.
MIX = {"hook_check": 0.45, "search": 0.30, "heartbeat": 0.15, "access_request": 0.10}
SEARCH_MIX = {"near": 0.30, "sees": 0.20, "bbox": 0.20, "filtered": 0.15, "polygon": 0.15}
HOOK_SERVERS = {"mediamtx": 0.5, "zlmediakit": 0.25, "nginx-rtmp": 0.25}
# Operation -> its kind; the order fixes the operation numbers the generator records.
OPERATIONS = {
    "search_near": "search",
    "search_sees": "search",
    "search_bbox": "search",
    "search_filtered": "search",
    "search_polygon": "search",
    "access_request": "access_request",
    "mediamtx_auth": "hook_check",
    "zlmediakit_on_play": "hook_check",
    "zlmediakit_on_flow_report": "hook_check",
    "nginx_on_play": "hook_check",
    "nginx_on_play_done": "hook_check",
    "heartbeat": "heartbeat",
}
KINDS = ("search", "access_request", "hook_check", "heartbeat")
SEARCH_PAGE = 50
ACCESS_SELECTION_LIMIT = 20
HEARTBEAT_BATCH = 20
OPEN_SESSIONS = 200  # per media server: older sessions are closed as new ones open
CONNECTIONS = 64
REQUEST_TIMEOUT = 30.0
# Measured on the 2-core machine: at 50 requests/s of this mix the `up` process used 0.56 of a
# core (about 11 ms of CPU a request, the events it causes through relay, worker and sink
# included); its Python work runs on one core, so about 80/s is its ceiling on an idle machine.
DEFAULT_RATE = 50.0
QUICK_RATE = 25.0
PURPOSE_FALLBACK = "city management"


# ------------------------------------------------------------------------------ the server


def _rss_mib(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


class FeedGridUp:
    """``feedgrid up`` in a child process with its own database, analytics store and var/.

    The demo city is written into ``var/demo`` first so that ``up`` loads that city (of the
    size asked for) on its first start, exactly as a user's first ``./deploy/up`` does. With
    ``demo=False`` it starts with ``--no-demo`` (an empty registry) and is ready once the
    embedded worker runs; ``extra_env`` adds or overrides ``FEEDGRID_*`` settings.
    """

    def __init__(
        self,
        workdir: Path,
        ttl_seconds: int,
        *,
        demo: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.demo = demo
        self.var_dir = workdir / "var"
        self.demo_dir = self.var_dir / "demo"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "up.log"
        self.env = dict(
            os.environ,
            FEEDGRID_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'registry.db'}",
            FEEDGRID_ADMIN_TOKEN=ADMIN_TOKEN,
            FEEDGRID_KAFKA_BOOTSTRAP=KAFKA,
            FEEDGRID_TOPIC_PREFIX=f"bench{uuid.uuid4().hex[:8]}.",
            FEEDGRID_CLICKHOUSE_URL=f"chdb://{workdir / 'analytics'}",
            FEEDGRID_VAR_DIR=str(self.var_dir),
            FEEDGRID_SIGNING_KEY_DIR=str(workdir / "keys"),
            FEEDGRID_LOG_LEVEL="WARNING",
            # Tokens handed out before the run must outlive it (the default is 15 minutes).
            FEEDGRID_RETRIEVAL_TOKEN_TTL_SECONDS=str(ttl_seconds),
        )
        self.env.update(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, load_deadline_s: float) -> None:
        command = [
            sys.executable, "-m", "deploy.cli", "up",
            "--host", "127.0.0.1", "--port", str(self.port), "--no-kafka",
        ]  # fmt: skip
        if not self.demo:
            command.append("--no-demo")
        # A file, not a pipe: nobody reads the server's output while it runs.
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + load_deadline_s
        while not (self._demo_ready() if self.demo else self._worker_ready()):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"feedgrid up exited with {self.process.returncode}" + self.tail()
                )
            if self.demo and "could not be loaded" in self.log_path.read_text(errors="replace"):
                raise RuntimeError("feedgrid up could not load the demo city" + self.tail())
            if time.monotonic() > deadline:
                raise RuntimeError("feedgrid up did not load the demo city in time" + self.tail())
            time.sleep(0.5)

    def _worker_ready(self) -> bool:
        """Without the demo city: ``/readyz`` answers ready and the embedded worker's stall
        watchdog is among its checks (the batch path has started)."""
        try:
            answer = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and "stream-worker" in answer.json().get("checks", {})

    def _demo_ready(self) -> bool:
        """The city is loaded and the replay of its access traffic is over (``up`` replays the
        demo stream once after loading the city; the load starts when ``up`` is settled)."""
        if not list(self.demo_dir.glob(".loaded-*")):
            return False
        replays = list(self.demo_dir.glob(".traffic-*"))
        if not replays:
            return False
        try:
            state = orjson.loads(replays[0].read_bytes()).get("state")
        except orjson.JSONDecodeError:
            return False
        if state == "failed":
            console.print("[yellow]feedgrid up could not replay the demo traffic[/yellow]")
        return state in ("done", "failed")

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def memory_mib(self) -> tuple[float, float]:
        """(the ``up`` process, its children together) resident memory in MiB."""
        assert self.process is not None
        main = _rss_mib(self.process.pid)
        children = 0.0
        for child in _children(self.process.pid):
            try:
                children += _rss_mib(child)
            except (OSError, KeyError):
                continue
        return main, children

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the ``up`` process has used so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pipeline_counters(self) -> dict[str, float]:
        """Counters of the relay, the hook-event writer and the embedded worker's sink."""
        wanted = {
            "feedgrid_outbox_relayed_total": "outbox_events_relayed",
            "feedgrid_sink_rows_total": "sink_rows_written",
            "feedgrid_hook_events_dropped_total": "hook_events_dropped",
            "feedgrid_sink_errors_total": "sink_insert_errors",
        }
        totals = dict.fromkeys(wanted.values(), 0.0)
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted:
                totals[wanted[name]] += float(line.rsplit(" ", 1)[1])
        return totals


# ------------------------------------------------------------------------------ the world


@dataclass
class World:
    """What the load needs: keys, feeds, queries, request bodies and retrieval tokens."""

    requester_keys: dict[str, str]
    gateway_keys: dict[str, str]
    feeds: list[dict[str, Any]]  # id, code, owner, kind of every feed
    city: list[Feature]  # the demo city's features (for placing queries)
    traffic: list[dict[str, Any]]  # the demo city's access-request stream

    def ids_by_code(self) -> dict[str, str]:
        return {feed["code"]: feed["id"] for feed in self.feeds}


def read_city(demo_dir: Path) -> tuple[list[dict[str, Any]], list[Feature], list[dict[str, Any]]]:
    def lines(name: str) -> list[Any]:
        raw = (demo_dir / name).read_bytes().splitlines()
        return [orjson.loads(line) for line in raw if line.strip()]

    departments = orjson.loads((demo_dir / "departments.json").read_bytes())
    return departments, lines("feeds.ndjson"), lines("access-requests.ndjson")


def build_world(url: str, demo_dir: Path) -> World:
    departments, city, traffic = read_city(demo_dir)
    requester_keys: dict[str, str] = {}
    gateway_keys: dict[str, str] = {}
    feeds: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
        for department in departments:
            code = department["code"]
            for role, keys in (("requester", requester_keys), ("gateway", gateway_keys)):
                issued = http.post(
                    f"/v1/departments/{code}/api-keys",
                    json={"name": f"bench {role}", "roles": [role]},
                )
                issued.raise_for_status()
                keys[code] = issued.json()["key"]
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = http.get("/v1/feeds", params=params)
            page.raise_for_status()
            answer = page.json()
            feeds.extend(
                {"id": f["id"], "code": f["code"], "owner": f["owner"], "kind": f["kind"]}
                for f in answer["items"]
            )
            cursor = answer["next_cursor"]
            if not cursor:
                break
    return World(requester_keys, gateway_keys, feeds, city, traffic)


def purposes(traffic: list[dict[str, Any]]) -> dict[str, str]:
    """Each department's usual purpose, as its requests in the demo stream state it."""
    found: dict[str, str] = {}
    for record in traffic:
        found.setdefault(record["requester"], record["purpose"])
    return found


def retrieval_tokens(url: str, world: World, wanted: int, minutes: int) -> list[dict[str, str]]:
    """``wanted`` retrieval tokens (JWT and compact form, with the gateway path) for camera
    grants of several departments: live view near random cameras of other departments."""
    rng = random.Random(11)
    usual = purposes(world.traffic)
    cameras = [f for f in world.city if f["properties"]["kind"] == "camera"]
    requesters = sorted(world.requester_keys)
    grants: list[tuple[str, str]] = []  # (department, grant id)
    for attempt in range(len(requesters) * 4):
        department = requesters[attempt % len(requesters)]
        lon, lat = rng.choice(cameras)["geometry"]["coordinates"]
        body = {
            "selection": {"near": f"{lon},{lat},1000", "kind": "camera", "limit": 20},
            "purpose": usual.get(department, PURPOSE_FALLBACK),
            "actions": ["live"],
            "duration_minutes": minutes,
        }
        headers = {"Authorization": f"Bearer {world.requester_keys[department]}"}
        answer = httpx.post(f"{url}/v1/access-requests", json=body, headers=headers, timeout=60)
        answer.raise_for_status()
        found = {item["grant_id"] for item in answer.json()["feeds"] if item["grant_id"]}
        grants.extend((department, grant_id) for grant_id in sorted(found))
        if len(grants) >= 60:
            break
    if not grants:
        raise RuntimeError("no access request was granted: no tokens for the hook checks")
    tokens: list[dict[str, str]] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        while len(tokens) < wanted:  # each retrieval call mints new tokens
            before = len(tokens)
            for department, grant_id in grants:
                headers = {"Authorization": f"Bearer {world.requester_keys[department]}"}
                answer = http.get(f"/v1/grants/{grant_id}/retrieval", headers=headers)
                answer.raise_for_status()
                tokens.extend(
                    {"path": f["media_path"], "token": f["token"], "compact": f["compact_token"]}
                    for f in answer.json()["feeds"]
                    if f.get("compact_token")
                )
            if len(tokens) == before:
                raise RuntimeError("the grants' retrievals carry no compact tokens")
    return tokens[:wanted]


def access_bodies(world: World) -> list[tuple[str, dict[str, Any]]]:
    """The demo stream's access requests as API bodies: (requester department, body)."""
    ids = world.ids_by_code()
    bodies: list[tuple[str, dict[str, Any]]] = []
    for record in world.traffic:
        if record["requester"] not in world.requester_keys:
            continue
        body: dict[str, Any] = {
            "purpose": record["purpose"],
            "actions": [record["action"]],
            "duration_minutes": record["duration_minutes"],
        }
        if record["emergency"]:
            # Emergency (break-glass) grants are short; the stream's durations are not.
            body.update(
                emergency=True,
                emergency_reason="incident response (benchmark)",
                duration_minutes=min(30, record["duration_minutes"]),
            )
        selection = record["selection"]
        if "feed_codes" in selection:
            feed_ids = [ids[code] for code in selection["feed_codes"] if code in ids]
            if not feed_ids:
                continue
            body["feed_ids"] = feed_ids
        else:
            lon, lat, metres = selection["near"]
            search: dict[str, Any] = {
                "near": f"{lon},{lat},{metres}",
                "kind": selection["kind"],
                "limit": ACCESS_SELECTION_LIMIT,
            }
            if selection.get("department"):
                search["department"] = selection["department"]
            body["selection"] = search
        bodies.append((record["requester"], body))
    return bodies


def search_requests(world: World, count: int) -> dict[str, list[dict[str, Any]]]:
    """Search requests placed where the city is: (method, path, body) per variant."""
    queries = make_queries(world.city, count)
    rng = random.Random(5)
    requests: dict[str, list[dict[str, Any]]] = {name: [] for name in SEARCH_MIX}

    def get(params: dict[str, Any]) -> dict[str, Any]:
        query = urlencode({**params, "limit": SEARCH_PAGE})
        return {"method": "GET", "path": f"/v1/feeds?{query}", "body": None}

    for query in queries["near_500m"]:
        requests["near"].append(get(query.params))
    for query in queries["sees"]:
        requests["sees"].append(get(query.params))
    for query in queries["filtered_list"]:
        requests["filtered"].append(get(query.params))
    for query in queries["polygon_10km2"]:
        body = {**query.params, "limit": SEARCH_PAGE}
        requests["polygon"].append({"method": "POST", "path": "/v1/feeds/search", "body": body})
    for query in queries["near_500m"]:  # about 900 m x 900 m around the same places
        lon, lat, _ = (float(value) for value in query.params["near"].split(","))
        params: dict[str, Any] = {
            "bbox": f"{lon - 0.005:.6f},{lat - 0.004:.6f},{lon + 0.005:.6f},{lat + 0.004:.6f}"
        }
        if rng.random() < 0.5:
            params["kind"] = "camera"
        requests["bbox"].append(get(params))
    return requests


def heartbeat_groups(world: World, feeds_per_department: int) -> list[dict[str, Any]]:
    """Each owner department's gateway and the feeds it reports (at most ``feeds_per_department``
    each, so that every reported feed is heard again well within the silence limit)."""
    owned: dict[str, list[str]] = {}
    for feed in world.feeds:
        owned.setdefault(feed["owner"], []).append(feed["id"])
    return [
        {"key": world.gateway_keys[owner], "feeds": ids[:feeds_per_department]}
        for owner, ids in sorted(owned.items())
        if owner in world.gateway_keys
    ]


# ------------------------------------------------------------------------------ the generator


def _weighted(rng: random.Random, table: dict[str, float]) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


class RequestMaker:
    """Builds request ``i`` of the schedule (deterministic for a seed), as raw HTTP/1.1."""

    def __init__(self, plan: dict[str, Any], host: str) -> None:
        self.plan = plan
        self.host = host
        self.rng = random.Random(plan["seed"])
        self.counters: dict[str, Iterator[int]] = {}
        self.sessions: dict[str, deque[tuple[str, dict[str, str]]]] = {
            server: deque() for server in HOOK_SERVERS
        }
        self.session_numbers = itertools.count(1)
        self.hook_keys = plan["hook_gateway_keys"]
        self.operation_numbers = {name: number for number, name in enumerate(OPERATIONS)}

    def _next(self, name: str, size: int) -> int:
        counter = self.counters.setdefault(name, itertools.count())
        return next(counter) % size

    def _raw(
        self, method: str, path: str, key: str, body: bytes | None, content_type: str = ""
    ) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {key}\r\n"
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    def make(self) -> tuple[int, bytes, int, bytes | None]:
        """(operation number, request bytes, expected status, expected body fragment)."""
        kind = _weighted(self.rng, self.plan["mix"])
        if kind == "search":
            return self._search()
        if kind == "access_request":
            requests = self.plan["access"]
            department, body = requests[self._next("access", len(requests))]
            raw = self._raw(
                "POST", "/v1/access-requests", self.plan["requester_keys"][department],
                orjson.dumps(body), "application/json",
            )  # fmt: skip
            return self.operation_numbers["access_request"], raw, 201, None
        if kind == "heartbeat":
            return self._heartbeat()
        return self._hook()

    def _search(self) -> tuple[int, bytes, int, bytes | None]:
        variant = _weighted(self.rng, SEARCH_MIX)
        pool = self.plan["searches"][variant]
        request = pool[self._next(variant, len(pool))]
        keys = self.plan["requester_list"]
        key = keys[self._next("searcher", len(keys))]
        body = orjson.dumps(request["body"]) if request["body"] is not None else None
        raw = self._raw(request["method"], request["path"], key, body, "application/json")
        return self.operation_numbers[f"search_{variant}"], raw, 200, None

    def _heartbeat(self) -> tuple[int, bytes, int, bytes | None]:
        groups = self.plan["heartbeats"]
        group = groups[self._next("heartbeat_group", len(groups))]
        feeds = group["feeds"]
        start = self._next(f"heartbeat:{group['key']}", max(1, len(feeds)))
        batch = [feeds[(start * HEARTBEAT_BATCH + n) % len(feeds)] for n in range(HEARTBEAT_BATCH)]
        # About one report in a hundred says offline, so statuses keep changing a little.
        items = [
            {"feed_id": feed_id, "status": "offline" if self.rng.random() < 0.01 else "online"}
            for feed_id in dict.fromkeys(batch)
        ]
        body = orjson.dumps({"items": items, "reporter": "bench-gateway"})
        raw = self._raw("POST", "/v1/heartbeats", group["key"], body, "application/json")
        return self.operation_numbers["heartbeat"], raw, 200, b'"rejected":[]'

    def _hook(self) -> tuple[int, bytes, int, bytes | None]:
        server = _weighted(self.rng, HOOK_SERVERS)
        key = self.hook_keys[server]
        tokens = self.plan["tokens"]
        if server == "mediamtx":
            token = tokens[self._next("token", len(tokens))]
            body = mediamtx_body(token["path"], token["token"]).encode()
            raw = self._raw("POST", "/v1/hooks/mediamtx/auth", key, body, "application/json")
            return self.operation_numbers["mediamtx_auth"], raw, 200, None
        open_sessions = self.sessions[server]
        if len(open_sessions) >= OPEN_SESSIONS:
            session, token = open_sessions.popleft()
            return self._hook_end(server, key, session, token)
        token = tokens[self._next("token", len(tokens))]
        session = str(next(self.session_numbers))
        open_sessions.append((session, token))
        app, stream = token["path"].split("/", 1)
        if server == "zlmediakit":
            body = orjson.dumps({
                "schema": "rtsp", "vhost": "__defaultVhost__", "app": app, "stream": stream,
                "params": f"token={token['token']}", "ip": "127.0.0.1", "port": 50000,
                "id": session, "mediaServerId": "bench-zlm",
            })  # fmt: skip
            raw = self._raw("POST", "/v1/hooks/zlmediakit/on_play", key, body, "application/json")
            return self.operation_numbers["zlmediakit_on_play"], raw, 200, b'"code":0'
        form = urlencode(self._nginx_form(app, stream, session, token)).encode()
        raw = self._raw(
            "POST", "/v1/hooks/nginx-rtmp/on_play", key, form, "application/x-www-form-urlencoded"
        )
        return self.operation_numbers["nginx_on_play"], raw, 200, None

    @staticmethod
    def _nginx_form(app: str, stream: str, session: str, token: dict[str, str]) -> dict[str, str]:
        return {
            "call": "play", "addr": "127.0.0.1", "clientid": session, "app": app,
            "flashVer": "LNX 9,0,124,2", "tcUrl": f"rtmp://127.0.0.1:1935/{app}", "name": stream,
            "start": "-2", "duration": "0", "reset": "0", "token": token["compact"],
        }  # fmt: skip

    def _hook_end(
        self, server: str, key: str, session: str, token: dict[str, str]
    ) -> tuple[int, bytes, int, bytes | None]:
        app, stream = token["path"].split("/", 1)
        if server == "zlmediakit":
            body = orjson.dumps({
                "totalBytes": 1_500_000 + int(session) % 1000, "duration": 30.0, "player": True,
                "ip": "127.0.0.1", "id": session, "app": app, "stream": stream,
                "params": f"token={token['token']}", "mediaServerId": "bench-zlm",
            })  # fmt: skip
            raw = self._raw(
                "POST", "/v1/hooks/zlmediakit/on_flow_report", key, body, "application/json"
            )
            return self.operation_numbers["zlmediakit_on_flow_report"], raw, 200, b'"code":0'
        form = self._nginx_form(app, stream, session, token) | {"call": "play_done"}
        raw = self._raw(
            "POST", "/v1/hooks/nginx-rtmp/on_play_done", key, urlencode(form).encode(),
            "application/x-www-form-urlencoded",
        )  # fmt: skip
        return self.operation_numbers["nginx_on_play_done"], raw, 200, None


class ConnectionPool:
    """At most ``size`` keep-alive connections; a slot holding ``None`` opens a new one."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.slots: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
            asyncio.Queue()
        )
        for _ in range(size):
            self.slots.put_nowait(None)

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        return await self.slots.get()

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    def release(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        self.slots.put_nowait(connection)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, the server closes the connection) of one HTTP/1.1 response."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed by the server")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked, closing = 0, False, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            closing = True
    if not chunked:
        return status, await reader.readexactly(length) if length else b"", closing
    parts = []
    while size := int((await reader.readline()).split(b";")[0], 16):
        parts.append(await reader.readexactly(size))
        await reader.readline()
    await reader.readline()
    return status, b"".join(parts), closing


async def generate_load(plan_path: Path, results_path: Path) -> None:
    """The load generator process: the whole schedule, then the samples to ``results_path``.

    Prints a progress line (JSON) every second on stdout for the orchestrating process.
    """
    plan = orjson.loads(plan_path.read_bytes())
    host, port = plan["url"].removeprefix("http://").split(":")
    maker = RequestMaker(plan, f"{host}:{port}")
    pool = ConnectionPool(host, int(port), CONNECTIONS)
    rate, warmup, duration = plan["rate"], plan["warmup"], plan["duration"]
    total = int(rate * (warmup + duration))
    operation = np.zeros(total, dtype=np.int16)
    latency = np.full(total, np.nan)
    status = np.zeros(total, dtype=np.int16)
    good = np.zeros(total, dtype=np.bool_)
    lag = np.zeros(total)
    errors: list[dict[str, Any]] = []
    counts = {"done": 0, "errors": 0, "rate_limited": 0}

    async def send(index: int, request: bytes, expected: int, fragment: bytes | None) -> None:
        due = began + index / rate
        connection = await pool.acquire()
        lag[index] = time.perf_counter() - due
        try:
            if connection is None:
                connection = await pool.open()
            reader, writer = connection
            writer.write(request)
            answer, body, closing = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT)
        except (OSError, EOFError, ValueError, IndexError) as error:
            if connection is not None:
                connection[1].close()
            pool.release(None)
            latency[index] = time.perf_counter() - due
            counts["done"] += 1
            counts["errors"] += 1
            if len(errors) < 20:
                errors.append({"operation": int(operation[index]), "error": repr(error)})
            return
        latency[index] = time.perf_counter() - due
        if closing:
            writer.close()
            pool.release(None)
        else:
            pool.release(connection)
        status[index] = answer
        good[index] = answer == expected and (fragment is None or fragment in body)
        counts["done"] += 1
        if answer == 429:
            counts["rate_limited"] += 1
        elif not good[index]:
            counts["errors"] += 1
            if len(errors) < 20:
                errors.append(
                    {
                        "operation": int(operation[index]),
                        "status": answer,
                        "body": body[:300].decode(errors="replace"),
                    }
                )

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.perf_counter() - began
            print(
                orjson.dumps({
                    "elapsed": round(elapsed, 1),
                    "phase": "warmup" if elapsed < warmup else "measure",
                    **counts,
                }).decode(),
                flush=True,
            )  # fmt: skip

    began = time.perf_counter() + 0.2
    began_wall = time.time() + 0.2
    reporter = asyncio.create_task(report_progress())
    tasks: set[asyncio.Task[None]] = set()
    for index in range(total):
        number, request, expected, fragment = maker.make()
        operation[index] = number
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(index, request, expected, fragment))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.wait(set(tasks))
    reporter.cancel()
    results_path.write_bytes(
        orjson.dumps(
            {
                "began_wall": began_wall,
                "operation": operation.tolist(),
                "latency": latency.tolist(),
                "status": status.tolist(),
                "good": good.tolist(),
                "dispatch_lag": lag.tolist(),
                "errors": errors,
            }
        )
    )
    print(orjson.dumps({"finished": True, **counts}).decode(), flush=True)


# ------------------------------------------------------------------------------ the run


@dataclass
class Samples:
    """One row per scheduled request, the warm-up's included (their ``due`` is negative)."""

    operation: np.ndarray
    due: np.ndarray  # seconds since the measured part began
    latency_ms: np.ndarray
    status: np.ndarray
    good: np.ndarray
    dispatch_lag_ms: np.ndarray
    errors: list[dict[str, Any]]


def run_generator(
    plan: dict[str, Any], workdir: Path, server: FeedGridUp
) -> tuple[Samples, list[tuple[float, float, float]], dict[str, Any]]:
    """Runs the generator process; samples the server's memory meanwhile. Returns the samples,
    the memory series (seconds since measuring began, main MiB, children MiB) and marks."""
    plan_path, results_path = workdir / "plan.json", workdir / "results.json"
    plan_path.write_bytes(orjson.dumps(plan))
    command = [
        sys.executable, "-m", "bench.bench_load", "--load-generator",
        str(plan_path), str(results_path),
    ]  # fmt: skip
    warmup, duration = plan["warmup"], plan["duration"]
    memory: list[tuple[float, float, float]] = []
    marks: dict[str, Any] = {}
    measuring_since: float | None = None
    last_sample = 0.0
    with (
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as generator,
        progress_bar() as progress,
    ):
        task = progress.add_task("mixed load: warm-up", total=warmup + duration)
        assert generator.stdout is not None
        for line in generator.stdout:
            status = orjson.loads(line)
            if status.get("finished"):
                break
            now = time.monotonic()
            if status["phase"] == "measure" and measuring_since is None:
                measuring_since = now
                marks["rss_start"] = server.memory_mib()
                marks["cpu_start"] = (now, server.cpu_seconds())
                marks["load_average_start"] = round(os.getloadavg()[0], 2)
                marks["counters_start"] = server.pipeline_counters()
                last_sample = 0.0
            if measuring_since is not None and now - last_sample >= 2.0:
                memory.append((now - measuring_since, *server.memory_mib()))
                last_sample = now
            if not server.alive():
                generator.kill()
                raise RuntimeError("feedgrid up died during the load" + server.tail())
            progress.update(
                task,
                completed=min(status["elapsed"], warmup + duration),
                description=(
                    f"mixed load ({status['phase']}): {status['done']:,} answered, "
                    f"{status['errors']} errors, {status['rate_limited']} x 429"
                ),
            )
        generator.wait()
    if generator.returncode != 0 or not results_path.exists():
        raise RuntimeError(f"the load generator failed (exit {generator.returncode})")
    marks["rss_end"] = server.memory_mib()
    marks["cpu_end"] = (time.monotonic(), server.cpu_seconds())
    marks["load_average_end"] = round(os.getloadavg()[0], 2)
    marks["counters_end"] = server.pipeline_counters()
    if measuring_since is not None:
        memory.append((time.monotonic() - measuring_since, *marks["rss_end"]))
    marks["drain_seconds"] = wait_for_pipeline(server)
    marks["counters_drained"] = server.pipeline_counters()
    raw = orjson.loads(results_path.read_bytes())
    samples = Samples(
        operation=np.array(raw["operation"]),
        due=np.arange(len(raw["operation"])) / plan["rate"] - warmup,
        latency_ms=np.array(raw["latency"], dtype=float) * 1000,
        status=np.array(raw["status"]),
        good=np.array(raw["good"], dtype=bool),
        dispatch_lag_ms=np.array(raw["dispatch_lag"]) * 1000,
        errors=raw["errors"],
    )
    return samples, memory, marks


def wait_for_pipeline(server: FeedGridUp, deadline_s: float = 120.0) -> float | None:
    """Seconds after the load until the relay and the sink stop moving (5 s unchanged)."""
    started = time.monotonic()
    previous = server.pipeline_counters()
    still_since = time.monotonic()
    while time.monotonic() - started < deadline_s:
        time.sleep(1.0)
        now = server.pipeline_counters()
        if now != previous:
            previous, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 5.0:
            return round(still_since - started, 1)
    return None


def _percentile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def report(
    plan: dict[str, Any],
    samples: Samples,
    memory: list[tuple[float, float, float]],
    marks: dict[str, Any],
    context: dict[str, Any],
) -> None:
    duration = plan["duration"]
    window = min(60.0, duration / 4)
    window_text = f"the first {window:.0f} s of the measured load (same run)"
    kinds_of = np.array([KINDS.index(kind) for kind in OPERATIONS.values()])
    kind_index = kinds_of[samples.operation]
    answered = ~np.isnan(samples.latency_ms)
    finished_at = samples.due + np.nan_to_num(samples.latency_ms) / 1000
    measured = (samples.due >= 0) & (samples.due < duration)
    # Answers given inside the measured window, whichever request they belong to: warm-up
    # answers spilling in balance measured ones spilling out, and a server falling behind
    # answers fewer than were offered.
    answered_in_window = answered & (finished_at >= 0) & (finished_at < duration)
    for kind in (*KINDS, "all"):
        of_kind = (
            np.ones(len(kind_index), bool) if kind == "all" else kind_index == KINDS.index(kind)
        )
        chosen = of_kind & measured
        if not chosen.any():
            continue
        latencies = samples.latency_ms[chosen & answered]
        offered = float(chosen.sum() / duration)
        achieved = float((of_kind & answered_in_window).sum() / duration)
        limited = int((samples.status[chosen] == 429).sum())
        failed = chosen & ~samples.good & (samples.status != 429)
        first = chosen & answered & (samples.due < window)
        last = chosen & answered & (samples.due >= duration - window)
        operations = {
            name: int((samples.operation[chosen] == number).sum())
            for number, name in enumerate(OPERATIONS)
            if kind in (OPERATIONS[name], "all")
        }
        emit(
            f"load_{kind}_throughput", float(achieved), "req/s",
            baseline="offered rate (the open-loop schedule)", baseline_value=round(offered, 2),
            target=">= 0.99x the offered rate", met=bool(achieved >= 0.99 * offered),
            requests=int(chosen.sum()), operations=operations, **context,
        )  # fmt: skip
        for q in (50, 99):
            value = _percentile(latencies, q)
            first_value = _percentile(samples.latency_ms[first], q)
            last_value = _percentile(samples.latency_ms[last], q)
            emit(
                f"load_{kind}_p{q}", value if value is not None else float("nan"), "ms",
                baseline=f"p{q} in {window_text}", baseline_value=first_value,
                last_window_ms=last_value,
                drift_last_vs_first=(
                    round(last_value / first_value, 3) if first_value and last_value else None
                ),
                target=None, met=None,
                note="whole measured run; latency counted from the moment each request was due",
            )  # fmt: skip
        statuses: dict[str, int] = {}
        for code in samples.status[failed]:
            label = str(code) if code else "no answer (timeout or socket error)"
            statuses[label] = statuses.get(label, 0) + 1
        emit(
            f"load_{kind}_errors", int(failed.sum()), "requests",
            target="0", met=bool(failed.sum() == 0),
            error_rate=round(float(failed.sum()) / int(chosen.sum()), 6),
            rate_limited_429=limited, statuses=statuses,
            note="any answer but the expected 2xx, plus timeouts; 429s counted apart",
        )  # fmt: skip
    report_memory(memory, marks, context)
    lag = samples.dispatch_lag_ms[measured]
    emit(
        "load_generator_dispatch_lag_p99", float(np.percentile(lag, 99)), "ms",
        max_ms=round(float(lag.max()), 3),
        note="how late the generator sent requests (waiting for a connection, or its own CPU); "
        "the latencies include it",
    )  # fmt: skip
    if samples.errors:
        console.print("[yellow]first errors:[/yellow]")
        names = list(OPERATIONS)
        for error in samples.errors[:10]:
            console.print(f"  {names[error['operation']]}: {error}")


def report_memory(
    memory: list[tuple[float, float, float]], marks: dict[str, Any], context: dict[str, Any]
) -> None:
    start_main, start_children = marks["rss_start"]
    end_main, end_children = marks["rss_end"]
    growth = (end_main - start_main) / start_main * 100
    series = np.array(memory) if memory else np.zeros((0, 3))
    slope = float(np.polyfit(series[:, 0] / 60, series[:, 1], 1)[0]) if len(series) >= 3 else None
    before, after, drained = (
        marks["counters_start"],
        marks["counters_end"],
        marks["counters_drained"],
    )
    emit(
        "load_api_worker_process_rss", end_main, "MiB",
        baseline="the same process after the warm-up (same run)",
        baseline_value=round(start_main, 1),
        growth_percent=round(growth, 2),
        peak_mib=round(float(series[:, 1].max()), 1) if len(series) else None,
        trend_mib_per_minute=round(slope, 3) if slope is not None else None,
        children_mib_start=round(start_children, 1), children_mib_end=round(end_children, 1),
        process="feedgrid up: API + outbox relay + embedded Faust worker + chdb in one process "
        "(children: the bulk-validation helper)",
        target="<= 10% growth", met=bool(growth <= 10),
        server_cpu_cores=round(
            (marks["cpu_end"][1] - marks["cpu_start"][1])
            / max(1e-9, marks["cpu_end"][0] - marks["cpu_start"][0]),
            3,
        ),
        pipeline_during_load={key: after[key] - before[key] for key in after},
        pipeline_drain_seconds=marks["drain_seconds"],
        pipeline_after_drain={key: drained[key] - before[key] for key in drained},
        **context,
    )  # fmt: skip


def make_plan(
    url: str, world: World, rate: float, warmup: float, duration: float, quick: bool, seed: int
) -> dict[str, Any]:
    scheduled = rate * (warmup + duration)
    hook_checks = scheduled * MIX["hook_check"]
    token_count = int(min(10_000, max(500, hook_checks / 4)))
    minutes = max(120, math.ceil((warmup + duration) / 60) + 60)
    console.print(f"issuing {token_count:,} retrieval tokens")
    tokens = retrieval_tokens(url, world, token_count, minutes)
    # Each reported feed is heard about every 60 s at the planned heartbeat rate.
    heartbeats_per_second = rate * MIX["heartbeat"] * HEARTBEAT_BATCH
    owners = len({feed["owner"] for feed in world.feeds})
    per_department = max(HEARTBEAT_BATCH, int(heartbeats_per_second * 60 / max(1, owners)))
    gateway_departments = sorted(world.gateway_keys)
    return {
        "url": url,
        "rate": rate,
        "warmup": warmup,
        "duration": duration,
        "seed": seed,
        "mix": MIX,
        "requester_keys": world.requester_keys,
        "requester_list": [world.requester_keys[code] for code in sorted(world.requester_keys)],
        "hook_gateway_keys": {
            server: world.gateway_keys[gateway_departments[n % len(gateway_departments)]]
            for n, server in enumerate(HOOK_SERVERS)
        },
        "tokens": tokens,
        "searches": search_requests(world, 200 if quick else 1000),
        "access": access_bodies(world),
        "heartbeats": heartbeat_groups(world, per_department),
    }


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--load-generator"]:
        asyncio.run(generate_load(Path(arguments[1]), Path(arguments[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: small city, 30 s load")
    parser.add_argument("--duration", type=float, help="measured seconds (default 600; quick 30)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds (default 60; quick 5)")
    parser.add_argument(
        "--rate",
        type=float,
        help=f"offered requests/s, all kinds (default {DEFAULT_RATE:g}; quick {QUICK_RATE:g})",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the request sequence")
    parser.add_argument("--workdir", type=Path, help="keep the server's files here")
    args = parser.parse_args(arguments)
    duration = args.duration or (30.0 if args.quick else 600.0)
    rate = args.rate or (QUICK_RATE if args.quick else DEFAULT_RATE)
    warmup = args.warmup if args.warmup is not None else (5.0 if args.quick else 60.0)
    cameras, sensors, requests = (5_700, 300, 120) if args.quick else (57_000, 3_000, 2_000)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Tokens are issued before the warm-up; they must hold until the end with room to spare.
    ttl = int(min(86_400, max(900, warmup + duration + 1800)))
    server = FeedGridUp(workdir, ttl)
    try:
        from deploy.seed.writer import write_demo_city

        console.print(f"writing the demo city: {cameras:,} cameras, {sensors:,} sensors")
        write_demo_city(server.demo_dir, cameras=cameras, sensors=sensors, requests=requests)
        console.print("starting feedgrid up (API + relay + embedded worker + chdb)")
        server.start(load_deadline_s=900)
        world = build_world(server.url, server.demo_dir)
        console.print(f"{len(world.feeds):,} feeds registered; preparing the load")
        plan = make_plan(server.url, world, rate, warmup, duration, args.quick, args.seed)
        samples, memory, marks = run_generator(plan, workdir, server)
        context = {
            "offered_rate_all": rate,
            "duration_s": duration,
            "warmup_s": warmup,
            "feeds": len(world.feeds),
            "server": "feedgrid up (one process: API, relay, embedded Faust worker, chdb), "
            "SQLite, local Kafka",
            "generator": f"open loop, second process, {CONNECTIONS} keep-alive connections",
            "machine_cores": os.cpu_count(),
        }
        # The machine may be shared: its load says how much else ran beside the benchmark.
        context["machine_load_average_1min"] = {
            "measure_start": marks.get("load_average_start"),
            "measure_end": marks.get("load_average_end"),
        }
        report(plan, samples, memory, marks, context)
    finally:
        server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
