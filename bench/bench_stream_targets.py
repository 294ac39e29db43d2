"""Issue 10's targets for the stream core, end to end through a real ``feedgrid up``.

Prints one JSON line per figure on stdout (``{"name", "value", "unit", "baseline",
"baseline_value", "target", "met", ...}``); progress goes to stderr.

Both phases run the all-in-one ``feedgrid up`` (``python -m deploy.cli up --no-kafka``: API,
outbox relay, the embedded worker in its own thread, chdb) as a child process with every store
in a temporary directory, against the local Kafka broker, and a load generator in a second
process (raw keep-alive HTTP/1.1 sockets, pre-encoded requests: it is never the bottleneck).

1. ``heartbeats``: an empty registry (``--no-demo``) gets N feeds of the demo city's kind
   (``POST /v1/feeds/bulk``), a gateway API key per owner department, and
   ``FEEDGRID_STREAM_HEARTBEAT_SILENCE_SECONDS`` = 20. The generator posts batches of 1,000
   reports (each batch one department's feeds, with its gateway key) to ``POST
   /v1/heartbeats`` on 8 connections in a closed loop, every feed in turn, once the
   registration's events are relayed. Warm-up: until every feed is online in the registry and
   the registry stands still (the online transitions are the only writes); feeds that went
   offline and back meanwhile are counted (``warmup_feeds_offline_and_back``: none should, as
   every feed is reported every few seconds). Then, measured:

   - reports/s accepted by the API over the steady window, beside the reports/s the worker
     consumed in the same window (``feedgrid_stream_events_total{agent="heartbeats"}``);
     baseline: ``GET /healthz`` on the same connections in the same process before the load,
     times 1,000 (the rate the bare HTTP stack would carry at 1,000 reports a request);
   - registry writes caused by the reports of the steady window: the feeds' ``revision`` sum
     and the outbox's highest id (read-only SQLite) before and after it (target 0); the coarse
     ``last_seen`` the worker sends at most every ``liveness_seen_seconds`` is reported apart;
   - silence: 100 feeds are left out of the reports while the rest go on at full load; for
     each, the time from the sending of its last report until ``GET /v1/feeds?status=offline``
     lists it, minus the configured silence (max, target <= 2 s);
   - at the end, the seconds until the worker has consumed every accepted report.

2. ``burst``: ``feedgrid up`` with the demo city (as ``bench_load`` starts it), retrieval
   tokens for camera grants of several departments, then MediaMTX auth checks (``POST
   /v1/hooks/mediamtx/auth``) on 32 connections in a closed loop for 60 s, with the gateway
   keys of every department in turn (the per-gateway limit is 5,000/s). Counted: the allowed
   answers (200). Then ``GET /v1/analytics/usage`` (the city admin, retrievals summed over
   every row) is polled until it has grown by the allowed count from its figure before the
   burst; value: seconds from the burst's end until then (target <= 60 s). ``/metrics`` is
   read every second meanwhile: the highest ``feedgrid_stream_stalled_seconds`` of any agent.

3. ``storm``: an empty registry gets 56,000 feeds (20,000 quick), all ``unknown``; every feed
   is then reported once (a gateway's first round, a city's network coming back): each report
   a transition. Value: the server's CPU ms per transition until everything has settled (every
   feed online, the outbox relayed, every agent caught up); baseline: the same round again,
   per unchanged report. ``--profile DIR`` samples the storm with py-spy.

``--quick``: 20,000 feeds and 15 s windows (a few minutes in all); the full run has 60,000
feeds (the demo city's size) and 60 s windows, under 10 minutes.
``--only heartbeats|burst|storm``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import orjson
from rich.progress import Progress

from bench.bench_access import profiled
from bench.bench_load import FeedGridUp, _read_response, build_world, retrieval_tokens
from bench.bench_registry import NDJSON, create_departments, demo_city, ndjson
from bench.common import (
    ADMIN_TOKEN,
    agent_figure,
    console,
    counter_sum,
    emit,
    mediamtx_body,
    progress_bar,
    scrape,
    stop_cleanly_on_sigterm,
)
from schemas.settings import load_tuning

HEARTBEAT_BATCH = 1_000
HEARTBEAT_CONNECTIONS = 8
HOOK_CONNECTIONS = 32
SILENCE_SECONDS = 20.0
SEEN_SECONDS = 60.0
SILENT_FEEDS = 100
SILENT_GROUPS = 10  # left out one after another, spread over one scan interval
TARGET_REPORTS_PER_SECOND = 20_000
TARGET_OFFLINE_MARGIN_S = 2.0
TARGET_VISIBLE_S = 60.0
REQUEST_TIMEOUT = 30.0
BULK_CHUNK = 20_000


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------ /metrics


class MetricsWatch:
    """Reads ``/metrics`` every second in a thread: every stall read, the highest lag."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lag: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        # (time, agent, stalled seconds, lag, bound) of every reading with a stall above 0;
        # bound: seconds since the agent's lag was last read as 0 (no stall can be longer)
        self.stalls: list[tuple[float, str, float, float, float]] = []
        self._lag_zero_at: dict[str, float] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MetricsWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                samples = scrape(self.url)
            except httpx.HTTPError:
                self.errors += 1
            else:
                self.latest = samples
                now = time.time()
                for key, value in samples.items():
                    if key.startswith("feedgrid_stream_lag{"):
                        agent = key.split('"')[1]
                        self.lag[agent] = max(self.lag.get(agent, 0.0), value)
                        if value == 0:
                            self._lag_zero_at[agent] = now
                for key, value in samples.items():
                    if value > 0 and key.startswith("feedgrid_stream_stalled_seconds{"):
                        agent = key.split('"')[1]
                        lag = samples.get(f'feedgrid_stream_lag{{agent="{agent}"}}', 0.0)
                        bound = now - self._lag_zero_at.get(agent, float("-inf"))
                        self.stalls.append((now, agent, value, lag, min(value, bound)))
            self._stop.wait(1.0)

    def stall_figures(self, since: float) -> dict[str, Any]:
        """The highest stall read, its agent and when (seconds after ``since``), and the first
        stall read after ``since`` (a stall that jumps at once to the idle time before is the
        watchdog counting from an old commit, not a worker that stopped)."""
        if not self.stalls:
            return {"stalled_seconds_max": 0.0}
        moment, agent, value, lag, _ = max(self.stalls, key=lambda reading: reading[2])
        figures: dict[str, Any] = {
            "stalled_seconds_max": value, "stalled_seconds_max_agent": agent,
            "stalled_seconds_max_at_s": round(moment - since, 1),
            "stalled_seconds_max_lag": lag,
            # the same readings, each capped at the time since its agent's lag was last read
            # as 0: what a watchdog counting from the moment records waited would say
            "stalled_seconds_max_since_lag_began": round(
                max(reading[4] for reading in self.stalls), 1
            ),
        }  # fmt: skip
        later = [reading for reading in self.stalls if reading[0] >= since]
        if later:
            moment, agent, value, lag, _ = later[0]
            figures["stalled_first_reading"] = {
                "at_s": round(moment - since, 1), "agent": agent, "seconds": value, "lag": lag
            }  # fmt: skip
        return figures


# ------------------------------------------------------------------------------ the generator
#
# One asyncio process; the orchestrating process drives it with JSON lines on its stdin and
# reads one JSON answer per command on its stdout.


def _raw(method: str, path: str, host: str, key: str | None, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if key:
        head += f"Authorization: Bearer {key}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


def _commands(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[dict[str, Any]]:
    """Lines of stdin, each a JSON command, as a queue (read in a thread)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(queue.put_nowait, orjson.loads(line))
        loop.call_soon_threadsafe(queue.put_nowait, {"cmd": "stop"})

    threading.Thread(target=read, daemon=True).start()
    return queue


class HeartbeatLoad:
    """Closed-loop heartbeat batches on a few keep-alive connections.

    Modes: ``healthz`` (GET /healthz, the baseline), ``reports`` (the batches of the current
    stage in turn), ``idle``. Stage 0 reports every feed; the ``silence`` command then leaves
    the silent feeds' groups out one after another, ``spacing`` seconds apart (stage k has the
    first k groups left out), so that their silences begin at different moments of the
    worker's periodic scan. Counts accepted reports and, per silent feed, the wall-clock time
    the last accepted request naming it was sent.
    """

    def __init__(self, plan: dict[str, Any]) -> None:
        host, port = plan["url"].removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        address = f"{host}:{port}"
        groups: list[list[str]] = plan["silent_groups"]
        silent = {feed for group in groups for feed in group}
        # stages[k]: (request bytes, the silent feeds it names) per batch
        self.stages: list[list[tuple[bytes, list[str]]]] = []
        for stage in range(len(groups) + 1):
            left_out = {feed for group in groups[:stage] for feed in group}
            requests = []
            for batch in plan["batches"]:
                kept = [feed for feed in batch["feeds"] if feed not in left_out]
                if kept:
                    named = [feed for feed in kept if feed in silent]
                    requests.append((self._request(address, batch["key"], kept), named))
            self.stages.append(requests)
        self.stage = 0
        self.healthz = _raw("GET", "/healthz", address, None, None)
        self.connections = plan["connections"]
        self.mode = "idle"
        self.counter = itertools.count()
        self.counts = {"requests": 0, "accepted": 0, "errors": 0, "rejected": 0}
        self.first_errors: list[str] = []
        self.last_report: dict[str, float] = {}
        self.silence_began: list[float] = []  # when each group was left out
        self.stopping = False
        self.wake = asyncio.Event()

    @staticmethod
    def _request(address: str, key: str, feeds: list[str]) -> bytes:
        items = [{"feed_id": feed, "status": "online"} for feed in feeds]
        body = orjson.dumps({"items": items, "reporter": "bench-gateway"})
        return _raw("POST", "/v1/heartbeats", address, key, body)

    async def connection(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not self.stopping:
            if self.mode == "idle":
                self.wake.clear()
                await self.wake.wait()
                continue
            mode = self.mode
            named: list[str] = []
            if mode == "healthz":
                request = self.healthz
            else:
                requests = self.stages[self.stage]
                request, named = requests[next(self.counter) % len(requests)]
            sent = time.time()
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(request)
                status, body, closing = await asyncio.wait_for(
                    _read_response(reader), REQUEST_TIMEOUT
                )
            except (OSError, EOFError, ValueError, IndexError, TimeoutError) as error:
                if writer is not None:
                    writer.close()
                reader = writer = None
                self._error(repr(error))
                status, body, closing = 0, b"", True
            if closing and writer is not None:
                writer.close()
                reader = writer = None
            if mode == "healthz":
                self.counts["requests"] += status == 200
                continue
            self.counts["requests"] += 1
            if status != 200:
                if status:
                    self._error(f"{status}: {body[:200].decode(errors='replace')}")
                continue
            answer = orjson.loads(body)
            self.counts["accepted"] += answer["accepted"]
            self.counts["rejected"] += len(answer["rejected"])
            for feed in named:
                self.last_report[feed] = max(self.last_report.get(feed, 0.0), sent)
        if writer is not None:
            writer.close()

    def _error(self, text: str) -> None:
        self.counts["errors"] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(text)

    def mark(self) -> dict[str, Any]:
        return {"time": time.time(), **self.counts}

    async def _silence(self, spacing: float) -> None:
        for stage in range(1, len(self.stages)):
            self.silence_began.append(time.time())
            self.stage = stage
            await asyncio.sleep(spacing)

    async def run(self) -> None:
        commands = _commands(asyncio.get_running_loop())
        tasks = [asyncio.create_task(self.connection()) for _ in range(self.connections)]
        silencing: asyncio.Task[None] | None = None
        while True:
            command = await commands.get()
            name = command["cmd"]
            if name == "healthz":  # the baseline: GET /healthz for the given seconds
                self.mode = "healthz"
                self.wake.set()
                before = self.mark()
                await asyncio.sleep(command["seconds"])
                after = self.mark()
                self.mode = "idle"
                _answer({
                    "requests_per_second": (after["requests"] - before["requests"])
                    / (after["time"] - before["time"]),
                })  # fmt: skip
            elif name == "reports":
                self.mode = "reports"
                self.wake.set()
                _answer(self.mark())
            elif name == "mark":
                _answer(self.mark())
            elif name == "silence":
                silencing = asyncio.create_task(self._silence(command["spacing"]))
                _answer(self.mark())
            elif name == "last_reports":
                _answer({"last_report": self.last_report, "silence_began": self.silence_began})
            elif name == "stop":
                if silencing is not None:
                    silencing.cancel()
                self.stopping = True
                self.wake.set()
                await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
                _answer({**self.mark(), "first_errors": self.first_errors})
                return


async def hook_burst(plan: dict[str, Any]) -> None:
    """MediaMTX auth checks on ``connections`` connections for ``seconds``; statuses counted.
    Prints a progress line every second and a final line with the counts."""
    host, port = plan["url"].removeprefix("http://").split(":")
    address = f"{host}:{port}"
    keys = plan["gateway_keys"]
    requests = [
        _raw(
            "POST", "/v1/hooks/mediamtx/auth", address, keys[number % len(keys)],
            mediamtx_body(token["path"], token["token"]).encode(),
        )
        for number, token in enumerate(plan["tokens"])
    ]  # fmt: skip
    counter = itertools.count()
    statuses: dict[int, int] = {}
    first_errors: list[str] = []
    began = time.time()
    deadline = time.monotonic() + plan["seconds"]

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.monotonic() < deadline:
            request = requests[next(counter) % len(requests)]
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(request)
                status, body, closing = await asyncio.wait_for(
                    _read_response(reader), REQUEST_TIMEOUT
                )
            except (OSError, EOFError, ValueError, IndexError, TimeoutError) as error:
                if writer is not None:
                    writer.close()
                reader = writer = None
                status, body, closing = 0, repr(error).encode(), False
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200 and len(first_errors) < 10:
                first_errors.append(f"{status}: {body[:200].decode(errors='replace')}")
            if closing and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            _answer({"elapsed": time.time() - began, "answered": sum(statuses.values())})

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(connection() for _ in range(plan["connections"])))
    ended = time.time()
    reporter.cancel()
    _answer({
        "finished": True, "began": began, "ended": ended,
        "statuses": {str(code): count for code, count in statuses.items()},
        "first_errors": first_errors,
    })  # fmt: skip


class Generator:
    """The generator process, seen from the orchestrating side."""

    def __init__(self, mode: str, plan: dict[str, Any], workdir: Path) -> None:
        plan_path = workdir / f"{mode}-plan.json"
        plan_path.write_bytes(orjson.dumps(plan))
        command = [
            sys.executable, "-m", "bench.bench_stream_targets", "--generator", mode,
            str(plan_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    @property
    def stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def ask(self, command: str, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps({"cmd": command, **arguments}).decode() + "\n")
        self.process.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({self.process.poll()})")
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextmanager
def generator(mode: str, plan: dict[str, Any], workdir: Path) -> Iterator[Generator]:
    process = Generator(mode, plan, workdir)
    try:
        yield process
    finally:
        process.close()


# ------------------------------------------------------------------------------ heartbeats


class Registry:
    """Read-only looks at the ``up`` process's SQLite registry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return connection.execute(statement).fetchall()
        finally:
            connection.close()

    def snapshot(self) -> dict[str, Any]:
        (revisions, online, offline), = self.query(
            "SELECT coalesce(sum(revision), 0), sum(status = 'online'), sum(status = 'offline') "
            "FROM feeds"
        )  # fmt: skip
        (outbox_id, unsent), = self.query(
            "SELECT coalesce(max(id), 0), sum(sent_at IS NULL) FROM outbox"
        )  # fmt: skip
        seen = dict(self.query("SELECT id, last_seen FROM feeds"))
        return {
            "revisions": int(revisions), "online": int(online or 0),
            "offline": int(offline or 0), "outbox_id": int(outbox_id), "unsent": int(unsent or 0),
            "last_seen": seen,
        }  # fmt: skip


def register_feeds(url: str, count: int, progress: Progress) -> None:
    cameras = round(count * 0.95)
    features = demo_city(cameras, count - cameras)
    task = progress.add_task(f"registering {count:,} feeds", total=count)
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=600
    ) as client:
        create_departments(client)
        for start in range(0, len(features), BULK_CHUNK):
            chunk = features[start : start + BULK_CHUNK]
            answer = client.post("/v1/feeds/bulk", content=ndjson(chunk), headers=NDJSON)
            answer.raise_for_status()
            result = answer.json()
            if result["rejected"]:
                raise RuntimeError(f"bulk import refused feeds: {result['rejected'][:3]}")
            progress.advance(task, len(chunk))


def heartbeat_plan(url: str, registry: Registry) -> tuple[dict[str, Any], int]:
    """Batches of 1,000 feeds of one owner each with its gateway key; the silent feeds spread
    over the owners. Returns the plan and the number of feeds."""
    owned: dict[str, list[str]] = {}
    for feed_id, owner in registry.query("SELECT id, owner FROM feeds ORDER BY id"):
        owned.setdefault(owner, []).append(feed_id)
    per_owner: list[list[dict[str, Any]]] = []
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as client:
        for owner, feeds in sorted(owned.items()):
            issued = client.post(
                f"/v1/departments/{owner}/api-keys",
                json={"name": "bench gateway", "roles": ["gateway"]},
            )
            issued.raise_for_status()
            key = issued.json()["key"]
            per_owner.append(
                [
                    {"key": key, "feeds": feeds[start : start + HEARTBEAT_BATCH]}
                    for start in range(0, len(feeds), HEARTBEAT_BATCH)
                ]
            )
    # the departments interleaved: every moment carries several gateways' reports
    batches = [
        batch for row in itertools.zip_longest(*per_owner) for batch in row if batch is not None
    ]
    every = [feed for feeds in owned.values() for feed in feeds]
    step = max(1, len(every) // SILENT_FEEDS)
    silent = every[::step][:SILENT_FEEDS]
    groups = [silent[number::SILENT_GROUPS] for number in range(SILENT_GROUPS)]
    plan = {
        "url": url,
        "connections": HEARTBEAT_CONNECTIONS,
        "batches": batches,
        "silent": silent,
        "silent_groups": groups,
    }
    return plan, len(every)


def start_city(server: FeedGridUp, registry: Registry, feeds: int) -> tuple[dict[str, Any], int]:
    """``feedgrid up --no-demo`` started, ``feeds`` feeds registered, a gateway key per owner
    and the registration's events relayed; returns the heartbeat plan and the feed count."""
    console.print("starting feedgrid up --no-demo (API + relay + embedded worker + chdb)")
    server.start(load_deadline_s=300)
    with progress_bar() as progress:
        register_feeds(server.url, feeds, progress)
    plan, feed_count = heartbeat_plan(server.url, registry)
    wait_relayed(registry, deadline_s=240)
    return plan, feed_count


def wait_relayed(registry: Registry, deadline_s: float) -> None:
    """Until the registration's events have left the outbox (before any load)."""
    started = time.monotonic()
    while registry.snapshot()["unsent"]:
        if time.monotonic() - started > deadline_s:
            raise RuntimeError("the registration's events were not relayed in time")
        time.sleep(0.5)


def wait_settled(
    server: FeedGridUp, registry: Registry, feeds: int, load: Generator, deadline_s: float
) -> dict[str, Any]:
    """Warm-up under the load: until every feed is online, the outbox is relayed and the
    feeds' revisions have not moved for 3 s."""
    started = time.monotonic()
    still_since, previous = time.monotonic(), None
    highest_lag = 0.0
    with progress_bar() as progress:
        task = progress.add_task("warm-up: feeds online", total=feeds)
        while time.monotonic() - started < deadline_s:
            time.sleep(1.0)
            if not server.alive():
                raise RuntimeError("feedgrid up died during the warm-up" + server.tail())
            snapshot = registry.snapshot()
            counts = load.ask("mark")
            lag = agent_figure(scrape(server.url), "feedgrid_stream_lag", "heartbeats")
            highest_lag = max(highest_lag, lag)
            progress.update(
                task,
                completed=snapshot["online"],
                description=f"warm-up: {counts['accepted']:,} reports accepted, "
                f"{snapshot['online']:,} feeds online, {snapshot['unsent']:,} events unrelayed",
            )
            state = (snapshot["revisions"], snapshot["outbox_id"])
            if state != previous:
                previous, still_since = state, time.monotonic()
            elif (
                snapshot["online"] == feeds
                and snapshot["unsent"] == 0
                and time.monotonic() - still_since >= 3.0
            ):
                # revision 1 at registration, 2 online: above that, a feed went offline and
                # back although every feed was reported every few seconds
                (flapped,) = registry.query("SELECT count(*) FROM feeds WHERE revision > 2")[0]
                return {
                    "warmup_s": round(time.monotonic() - started, 1),
                    "warmup_worker_lag_max": int(highest_lag),
                    "warmup_feeds_offline_and_back": int(flapped),
                }
    raise RuntimeError(
        f"the registry did not settle in {deadline_s:.0f} s (online {snapshot['online']:,} "
        f"of {feeds:,}, {snapshot['unsent']:,} unrelayed)" + server.tail()
    )


def steady_window(
    server: FeedGridUp, load: Generator, seconds: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], dict[str, float], int]:
    """The measured window: marks and metrics at both ends, the highest lag inside."""
    metrics_before = scrape(server.url)
    mark_before = load.ask("mark")
    highest_lag = 0
    with progress_bar() as progress:
        task = progress.add_task("heartbeats: steady window", total=round(seconds))
        while (elapsed := time.time() - mark_before["time"]) < seconds:
            time.sleep(min(1.0, max(0.0, seconds - elapsed)))
            samples = scrape(server.url)
            lag = int(agent_figure(samples, "feedgrid_stream_lag", "heartbeats"))
            highest_lag = max(highest_lag, lag)
            now = load.ask("mark")
            rate = (now["accepted"] - mark_before["accepted"]) / max(
                1e-9, now["time"] - mark_before["time"]
            )
            progress.update(
                task,
                completed=round(min(seconds, now["time"] - mark_before["time"])),
                description=f"heartbeats: {rate:,.0f} reports/s accepted, worker lag {lag:,}",
            )
    mark_after = load.ask("mark")
    metrics_after = scrape(server.url)
    return mark_before, mark_after, metrics_before, metrics_after, highest_lag


def watch_silence(
    url: str, silent: list[str], began: float, deadline_s: float
) -> tuple[dict[str, float], int]:
    """When each silent feed is first listed offline; and how many other feeds were."""
    silent_set = set(silent)
    offline_at: dict[str, float] = {}
    others = 0
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with (
        httpx.Client(base_url=url, headers=headers, timeout=30) as client,
        progress_bar() as progress,
    ):
        task = progress.add_task("silence: feeds offline", total=len(silent))
        while len(offline_at) < len(silent) and time.monotonic() - started < deadline_s:
            listed: set[str] = set()
            cursor = None
            while True:
                params: dict[str, Any] = {"status": "offline", "limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                page = client.get("/v1/feeds", params=params)
                seen_at = time.time()
                page.raise_for_status()
                answer = page.json()
                listed.update(item["id"] for item in answer["items"])
                cursor = answer.get("next_cursor")
                if not cursor:
                    break
            for feed in listed & silent_set:
                offline_at.setdefault(feed, seen_at)
            others = max(others, len(listed - silent_set))
            progress.update(
                task,
                completed=len(offline_at),
                description=f"silence: {len(offline_at)} of {len(silent)} offline, "
                f"{time.time() - began:.1f} s after the first group fell silent",
            )
            time.sleep(0.25)
    return offline_at, others


def bench_heartbeats(quick: bool, workdir: Path, seconds: float | None, feeds: int | None) -> None:
    seconds = seconds or (15.0 if quick else 60.0)
    feeds_wanted = feeds or (20_000 if quick else 60_000)
    server = FeedGridUp(
        workdir,
        ttl_seconds=3600,
        demo=False,
        extra_env={
            "FEEDGRID_STREAM_HEARTBEAT_SILENCE_SECONDS": str(SILENCE_SECONDS),
            "FEEDGRID_STREAM_LIVENESS_SEEN_SECONDS": str(SEEN_SECONDS),
        },
    )
    registry = Registry(workdir / "registry.db")
    # what the server's worker scans with: these settings, the rest from this environment
    scan_seconds = load_tuning(
        heartbeat_silence_seconds=SILENCE_SECONDS, liveness_seen_seconds=SEEN_SECONDS
    ).liveness_scan_seconds
    try:
        plan, feed_count = start_city(server, registry, feeds_wanted)
        console.print(
            f"{feed_count:,} feeds in {len(plan['batches'])} batches of at most "
            f"{HEARTBEAT_BATCH:,}; {HEARTBEAT_CONNECTIONS} connections"
        )
        with generator("heartbeats", plan, workdir) as load:
            console.print("baseline: GET /healthz on the same connections")
            healthz = load.ask("healthz", seconds=5.0 if quick else 10.0)
            load.ask("reports")
            warm = wait_settled(server, registry, feed_count, load, deadline_s=360)
            console.print(f"settled after {warm['warmup_s']} s of warm-up; measuring")
            load_start = load_average()
            registry_before = registry.snapshot()
            before, after, metrics_before, metrics_after, highest_lag = steady_window(
                server, load, seconds
            )
            # Registry writes the window's reports cause reach SQLite a moment later.
            time.sleep(5.0)
            registry_after = registry.snapshot()
            writes_end = load.ask("mark")
            load_end = load_average()
            spacing = scan_seconds / SILENT_GROUPS
            silenced = load.ask("silence", spacing=spacing)
            offline_at, false_offline = watch_silence(
                server.url, plan["silent"], silenced["time"], SILENCE_SECONDS + scan_seconds + 40
            )
            silenced = load.ask("last_reports")
            totals = load.ask("stop")
        load_stopped = time.time()
        drain_s, consumed_total = wait_consumed(server.url, totals["accepted"], deadline_s=60)
        context = {
            "feeds": feed_count,
            "batch_reports": HEARTBEAT_BATCH,
            "connections": HEARTBEAT_CONNECTIONS,
            "server": "feedgrid up --no-demo (one process: API, relay, embedded worker in its "
            "own thread, chdb), SQLite, local Kafka",
            "generator": "closed loop, second process, raw keep-alive HTTP/1.1",
            "machine_cores": os.cpu_count(),
            "machine_load_average_1min": {"window_start": load_start, "window_end": load_end},
        }
        window = after["time"] - before["time"]
        accepted_rate = (after["accepted"] - before["accepted"]) / window
        consumed = agent_figure(
            metrics_after, "feedgrid_stream_events_total", "heartbeats"
        ) - agent_figure(metrics_before, "feedgrid_stream_events_total", "heartbeats")
        consumed_rate = consumed / window
        lag_end = int(agent_figure(metrics_after, "feedgrid_stream_lag", "heartbeats"))
        baseline = healthz["requests_per_second"] * HEARTBEAT_BATCH
        drained = drain_s is not None
        emit(
            "heartbeats_reports_per_second", accepted_rate, "reports/s",
            baseline="GET /healthz requests/s on the same connections, same process, before "
            "the load, x 1,000 reports a request (the bare HTTP stack's ceiling)",
            baseline_value=round(baseline, 1),
            healthz_requests_per_second=round(healthz["requests_per_second"], 1),
            consumed_by_worker_per_second=round(consumed_rate, 1),
            worker_lag_end_of_window=lag_end, worker_lag_max_in_window=highest_lag,
            drain_after_load_s=drain_s, consumed_total=int(consumed_total),
            accepted_total=totals["accepted"],
            errors_in_window=after["errors"] - before["errors"],
            rejected_in_window=after["rejected"] - before["rejected"],
            requests_in_window=after["requests"] - before["requests"],
            window_s=round(window, 2), **warm,
            target=f">= {TARGET_REPORTS_PER_SECOND:,} reports/s accepted and consumed by the "
            "worker in the same window; every report consumed after the load",
            met=bool(
                min(accepted_rate, consumed_rate) >= TARGET_REPORTS_PER_SECOND and drained
            ),
            note="value: reports accepted by POST /v1/heartbeats (batches of 1,000) over the "
            "steady window; consumed: feedgrid_stream_events_total{agent=heartbeats} delta",
            **context,
        )  # fmt: skip
        revisions = registry_after["revisions"] - registry_before["revisions"]
        outbox = registry_after["outbox_id"] - registry_before["outbox_id"]
        seen_before, seen_after = registry_before["last_seen"], registry_after["last_seen"]
        coarse = sum(1 for feed, seen in seen_after.items() if seen != seen_before.get(feed))
        reports = writes_end["accepted"] - before["accepted"]
        emit(
            "heartbeats_registry_writes_for_unchanged_reports", revisions + outbox, "writes",
            revision_bumps=revisions, outbox_rows=outbox,
            reports_in_span=reports, span_s=round(writes_end["time"] - before["time"], 1),
            online_before=registry_before["online"], online_after=registry_after["online"],
            coarse_last_seen_feeds_updated=coarse,
            coarse_last_seen_interval_s=SEEN_SECONDS,
            target="0", met=bool(revisions + outbox == 0),
            note="every feed online before the span, every report says online: feeds' revision "
            "sum and the outbox's highest id (read-only SQLite) before and 5 s after the steady "
            "window; the coarse last_seen (at most one per feed per interval, by design) apart",
            **context,
        )  # fmt: skip
        delays = [
            offline_at[feed] - silenced["last_report"][feed]
            for feed in plan["silent"]
            if feed in offline_at and feed in silenced["last_report"]
        ]
        missing = len(plan["silent"]) - len(delays)
        over = max(delays) - SILENCE_SECONDS if delays else float("nan")
        emit(
            "heartbeats_silent_feed_offline_after_silence", over, "s",
            silent_feeds=len(plan["silent"]), went_offline=len(delays),
            never_offline=missing, other_feeds_listed_offline=false_offline,
            silence_s=SILENCE_SECONDS, liveness_scan_seconds=scan_seconds,
            silent_groups=SILENT_GROUPS, group_spacing_s=round(spacing, 3),
            delay_min_s=round(min(delays), 3) if delays else None,
            delay_p50_s=round(float(np.percentile(delays, 50)), 3) if delays else None,
            delay_max_s=round(max(delays), 3) if delays else None,
            target=f"<= {TARGET_OFFLINE_MARGIN_S:g} s (offline within heartbeat_silence + 2 s)",
            met=bool(delays and missing == 0 and over <= TARGET_OFFLINE_MARGIN_S),
            note="max over the silent feeds of (first time GET /v1/feeds?status=offline lists "
            "it - sending of its last report) - the configured silence; the silent feeds fall "
            "silent in groups spread over one liveness scan interval, the rest report on at "
            "full load; the API polled every 0.25 s",
            load_stopped_at=round(load_stopped, 1),
            **context,
        )  # fmt: skip
        if totals["first_errors"]:
            console.print(f"[yellow]first errors: {totals['first_errors']}[/yellow]")
    finally:
        server.stop()


def wait_consumed(url: str, accepted: int, deadline_s: float) -> tuple[float | None, float]:
    """Seconds until the worker has consumed ``accepted`` heartbeats (None: not in time)."""
    started = time.monotonic()
    consumed = 0.0
    while time.monotonic() - started < deadline_s:
        consumed = agent_figure(scrape(url), "feedgrid_stream_events_total", "heartbeats")
        if consumed >= accepted:
            return round(time.monotonic() - started, 1), consumed
        time.sleep(0.5)
    return None, consumed


# ------------------------------------------------------------------------------ burst


def retrievals_counted(client: httpx.Client) -> int:
    answer = client.get("/v1/analytics/usage", params={"granularity": "hour"})
    answer.raise_for_status()
    return sum(int(row["retrievals"]) for row in answer.json()["rows"])


def stable_retrievals(client: httpx.Client, url: str, deadline_s: float) -> int:
    """The analytics' retrievals once the worker has caught up (lag 0, same figure 3 s)."""
    started = time.monotonic()
    previous, since = -1, time.monotonic()
    while time.monotonic() - started < deadline_s:
        figure = retrievals_counted(client)
        lag = agent_figure(scrape(url), "feedgrid_stream_lag", "access-events")
        if figure != previous or lag:
            previous, since = figure, time.monotonic()
        elif time.monotonic() - since >= 3.0:
            return figure
        time.sleep(0.5)
    return previous


def bench_burst(quick: bool, workdir: Path, seconds: float | None) -> None:
    from deploy.seed.writer import write_demo_city

    seconds = seconds or (15.0 if quick else 60.0)
    cameras, sensors, requests = (5_700, 300, 120) if quick else (57_000, 3_000, 2_000)
    wait_limit = 120.0 if quick else 180.0
    server = FeedGridUp(workdir, ttl_seconds=7200)
    try:
        console.print(f"writing the demo city: {cameras:,} cameras, {sensors:,} sensors")
        write_demo_city(server.demo_dir, cameras=cameras, sensors=sensors, requests=requests)
        console.print("starting feedgrid up with the demo city")
        server.start(load_deadline_s=900)
        world = build_world(server.url, server.demo_dir)
        tokens = retrieval_tokens(server.url, world, 2_000, minutes=120)
        console.print(f"{len(world.feeds):,} feeds, {len(tokens):,} retrieval tokens")
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=60) as client,
            MetricsWatch(server.url) as watch,
        ):
            base = stable_retrievals(client, server.url, deadline_s=120)
            console.print(f"analytics before the burst: {base:,} retrievals")
            before = scrape(server.url)
            load_start = load_average()
            plan = {
                "url": server.url,
                "connections": HOOK_CONNECTIONS,
                "seconds": seconds,
                "tokens": tokens,
                "gateway_keys": [world.gateway_keys[code] for code in sorted(world.gateway_keys)],
            }
            with generator("hooks", plan, workdir) as burst, progress_bar() as progress:
                task = progress.add_task("burst: hook checks", total=round(seconds))
                for line in burst.stdout:
                    status = orjson.loads(line)
                    if status.get("finished"):
                        break
                    progress.update(
                        task,
                        completed=min(round(status["elapsed"]), round(seconds)),
                        description=f"burst: {status['answered']:,} hook checks answered",
                    )
                else:
                    raise RuntimeError("the hook generator exited before finishing")
            load_end = load_average()
            allowed = int(status["statuses"].get("200", 0))
            answered = sum(status["statuses"].values())
            burst_s = status["ended"] - status["began"]
            expected = base + allowed
            counted = base
            visible_s: float | None = None
            with progress_bar() as progress:
                task = progress.add_task("analytics: allowed checks visible", total=allowed)
                while (waited := time.time() - status["ended"]) < wait_limit:
                    counted = retrievals_counted(client)
                    progress.update(
                        task,
                        completed=max(0, counted - base),
                        description=f"analytics: {counted - base:,} of {allowed:,} "
                        f"({waited:.0f} s after the burst)",
                    )
                    if counted >= expected:
                        visible_s = time.time() - status["ended"]
                        break
                    time.sleep(1.0)
            after = scrape(server.url)
            stalls = watch.stall_figures(since=status["began"])
        written = counter_sum(after, "feedgrid_hook_events_written_total") - counter_sum(
            before, "feedgrid_hook_events_written_total"
        )
        dropped = counter_sum(after, "feedgrid_hook_events_dropped_total") - counter_sum(
            before, "feedgrid_hook_events_dropped_total"
        )
        set_aside = counter_sum(after, "feedgrid_stream_publish_set_aside_total") - counter_sum(
            before, "feedgrid_stream_publish_set_aside_total"
        )
        emit(
            "burst_allowed_checks_visible_in_analytics", visible_s
            if visible_s is not None else round(time.time() - status["ended"], 1), "s",
            complete=visible_s is not None,
            allowed_checks=allowed, answered=answered,
            statuses=status["statuses"], first_errors=status["first_errors"][:3],
            hook_checks_per_second=round(answered / burst_s, 1),
            allowed_per_second=round(allowed / burst_s, 1),
            burst_s=round(burst_s, 1), connections=HOOK_CONNECTIONS,
            retrievals_before=base, retrievals_counted_increase=counted - base,
            missing_at_end=max(0, expected - counted),
            **stalls, lag_max=watch.lag,
            hook_events_written=int(written), hook_events_dropped=int(dropped),
            publish_set_aside=int(set_aside),
            feeds=len(world.feeds), tokens=len(tokens),
            target=f"<= {TARGET_VISIBLE_S:g} s", met=bool(
                visible_s is not None and visible_s <= TARGET_VISIBLE_S
            ),
            note="seconds from the burst's end until GET /v1/analytics/usage (city admin, "
            "retrievals summed) grew by the allowed (200) MediaMTX auth checks from its figure "
            "before the burst; closed loop, gateway keys of every department in turn",
            server="feedgrid up with the demo city (one process: API, relay, embedded worker "
            "in its own thread, chdb), SQLite, local Kafka",
            machine_cores=os.cpu_count(),
            machine_load_average_1min={"burst_start": load_start, "burst_end": load_end},
        )  # fmt: skip
    finally:
        server.stop()


# ------------------------------------------------------------------------------ main


PHASES = ("heartbeats", "burst", "storm")
DEFAULT_PHASES = ("heartbeats", "burst")  # the storm only when asked: --only storm


# --------------------------------------------------------------------------------- storm


def report_round(url: str, plan: dict[str, Any]) -> int:
    """Every feed of the plan reported once (its batches in turn, one connection, as a
    gateway's first round goes out); returns how many reports the API accepted."""
    accepted = 0
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        for batch in plan["batches"]:
            answer = client.post(
                "/v1/heartbeats",
                json={"items": [{"feed_id": feed_id} for feed_id in batch["feeds"]]},
                headers={"Authorization": f"Bearer {batch['key']}"},
            )
            answer.raise_for_status()
            accepted += int(answer.json()["accepted"])
    return accepted


def wait_quiet(
    server: FeedGridUp, registry: Registry, online: int, deadline_s: float
) -> tuple[float, float]:
    """Until ``online`` feeds are online, the outbox is relayed, every agent of the worker has
    caught up and nothing has moved for 2 s; returns the moment (monotonic) and the server's
    CPU seconds when the final state was first seen."""
    started = time.monotonic()
    previous: tuple[Any, ...] | None = None
    since = (time.monotonic(), server.cpu_seconds())
    while time.monotonic() - started < deadline_s:
        time.sleep(0.25)
        moment, cpu = time.monotonic(), server.cpu_seconds()
        (revisions, now_online, outbox_id, unsent), = registry.query(
            "SELECT (SELECT coalesce(sum(revision), 0) FROM feeds), "
            "(SELECT count(*) FROM feeds WHERE status = 'online'), "
            "(SELECT coalesce(max(id), 0) FROM outbox), "
            "(SELECT count(*) FROM outbox WHERE sent_at IS NULL)"
        )  # fmt: skip
        lag = counter_sum(scrape(server.url), "feedgrid_stream_lag")
        state = (revisions, outbox_id, now_online)
        if state != previous or unsent or lag:
            previous, since = state, (moment, cpu)
        elif now_online == online and moment - since[0] >= 2.0:
            return since
    raise RuntimeError(f"the storm did not settle in {deadline_s:.0f} s" + server.tail())


def bench_storm(quick: bool, workdir: Path, feeds: int | None, profile: Path | None = None) -> None:
    """Every feed of a city reported at once while all are ``unknown`` (the demo gateways'
    first round, a city's network coming back): each report is a transition the worker
    publishes, the registry writes (status, revision, a feed.status event), the relay sends
    and the worker follows on feed-metadata. Value: the server's CPU per transition, from the
    first report until everything has settled; baseline: the same round again once every feed
    is online (reports that change nothing), per report."""
    feeds_wanted = feeds or (20_000 if quick else 56_000)
    server = FeedGridUp(workdir, ttl_seconds=3600, demo=False)
    registry = Registry(workdir / "registry.db")
    try:
        plan, feed_count = start_city(server, registry, feeds_wanted)
        wait_quiet(server, registry, 0, deadline_s=240)  # the registration followed
        rounds: dict[str, dict[str, float]] = {}
        for name in ("storm", "unchanged"):
            assert server.process is not None
            with profiled(server.process.pid, profile if name == "storm" else None, name):
                began, cpu_before = time.monotonic(), server.cpu_seconds()
                accepted = report_round(server.url, plan)
                console.print(f"{name}: {accepted:,} reports accepted; waiting until settled")
                settled, cpu_after = wait_quiet(server, registry, feed_count, deadline_s=600)
            rounds[name] = {
                "accepted": accepted,
                "seconds": settled - began,
                "cpu_s": cpu_after - cpu_before,
            }
        transitions = registry.query("SELECT count(*) FROM feeds WHERE status = 'online'")[0][0]
    finally:
        server.stop()
    storm, unchanged = rounds["storm"], rounds["unchanged"]
    per_transition = 1000 * storm["cpu_s"] / max(transitions, 1)
    per_report = 1000 * unchanged["cpu_s"] / max(unchanged["accepted"], 1)
    emit(
        "liveness_storm_cpu_ms_per_transition", per_transition, "ms",
        baseline="the same round again, every feed online: server CPU ms per unchanged report",
        baseline_value=round(per_report, 4), ratio=round(per_transition / max(per_report, 1e-9), 1),
        transitions=int(transitions), feeds=feed_count, storm_seconds=round(storm["seconds"], 2),
        storm_cpu_s=round(storm["cpu_s"], 2), unchanged_seconds=round(unchanged["seconds"], 2),
        unchanged_cpu_s=round(unchanged["cpu_s"], 2), batch_reports=HEARTBEAT_BATCH,
        server="feedgrid up --no-demo (one process: API, relay, embedded worker in its own "
        "thread, chdb), SQLite, local Kafka",
        note="from the first report until every feed is online, the outbox relayed, every "
        "agent caught up and nothing moved for 2 s",
        machine_cores=os.cpu_count(), machine_load_average_1min=load_average(),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    stop_cleanly_on_sigterm()
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--generator"]:
        plan = orjson.loads(Path(arguments[2]).read_bytes())
        if arguments[1] == "heartbeats":
            asyncio.run(HeartbeatLoad(plan).run())
        else:
            asyncio.run(hook_burst(plan))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 feeds, 15 s")
    parser.add_argument("--only", nargs="*", choices=PHASES, help="run only these phases")
    parser.add_argument("--seconds", type=float, help="measured seconds (default 60; quick 15)")
    parser.add_argument(
        "--feeds", type=int, help="heartbeats: feeds (default 60,000; quick 20,000)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the servers' files here")
    parser.add_argument(
        "--profile", type=Path, help="storm: py-spy samples the server's storm into DIR"
    )
    args = parser.parse_args(arguments)
    failures = 0
    for phase in args.only or DEFAULT_PHASES:
        workdir = (
            args.workdir / phase
            if args.workdir
            else Path(tempfile.mkdtemp(prefix=f"bench-{phase}-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if phase == "heartbeats":
                bench_heartbeats(args.quick, workdir, args.seconds, args.feeds)
            elif phase == "storm":
                bench_storm(args.quick, workdir, args.feeds, args.profile)
            else:
                bench_burst(args.quick, workdir, args.seconds)
        except Exception as error:  # the other phase still runs; the exit status tells
            failures += 1
            console.print(f"[red]{phase} failed: {error!r}[/red]")
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
