"""Replaying the demo city's access requests through the HTTP API, as its departments would.

``deploy/seed`` writes a week of access requests (``access-requests.ndjson``) next to the feeds.
Loading only the feeds leaves a new installation with empty analytics and an empty dashboard,
so ``feedgrid up`` also replays that traffic once, through the same public API a department
and a media server use (nothing is written behind the API's back):

1. the city admin issues API keys: a few duty officers (``requester``) per requesting
   department, one ``dept_admin`` desk per owner, one ``gateway`` key per media server;
2. each officer posts the requests (feed codes resolved to feed ids through
   ``GET /v1/feeds/points``; spatial selections sent as the API's own ``selection``);
3. each owner answers what waits for it: approves a majority, denies some, leaves a few
   pending (a deterministic draw per request and owner), and confirms emergency grants;
4. the officers fetch retrieval tokens of their grants and play feeds; the media servers ask
   FeedGrid's hooks (MediaMTX ``auth``, ZLMediaKit ``on_play`` / ``on_flow_report``,
   nginx-rtmp ``on_play`` / ``on_play_done``) exactly as they do in production, including a
   few refused plays (a player without a token, a token used for another feed) and a token
   shared with a second address, so denials and alerts show too.

The API stamps everything with the present time (a request's ``at`` in the file only orders
the replay), and the events reach ClickHouse by themselves: outbox -> Kafka -> worker.

Everything is drawn from seeded generators and planned in file order before the concurrent
calls, so the same files and seed give the same requests, decisions and plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from deploy.seed.city import Rand

log = logging.getLogger("feedgrid.demo")

T = TypeVar("T")

DEFAULT_SEED = 28181
# A few connections at once: the single `feedgrid up` process answers them in turn, and the
# waiting on each answer (the network, the database's commit) overlaps.
DEFAULT_CONCURRENCY = 8
# Requests replayed out of the file's week (spread evenly over it, so the mix of departments,
# hours and selections stays the same); 0 replays them all, as `feedgrid up` does.
DEFAULT_MAX_REQUESTS = 0
# Grants played now through the media servers' hooks by `feedgrid up` (those of the latest
# requests): the week's earlier plays are in its recorded log, with their own times.
LIVE_PLAYED_GRANTS = 60
# A spatial request asks for the nearest feeds only, as a person picking cameras on a map would.
SELECTION_LIMIT = 5
# Requests one duty officer makes over the demo week: enough officers that no one opens more
# feeds in the compressed replay than the bulk-harvesting rule allows a person in a minute.
REQUESTS_PER_OFFICER = 15
MAX_FEEDS_PER_OFFICER = 40
# The owners' answers to what waits for them (the rest stays in their inbox).
APPROVE_SHARE = 0.7
DENY_SHARE = 0.2
# Grants that are used at all, and how many of a grant's feeds a department plays.
PLAYED_GRANT_SHARE = 0.85
FEEDS_PLAYED = (1, 1, 1, 2)
MEGABITS_PER_SECOND = (1.0, 2.0, 2.0, 4.0)  # sub-stream, main stream, 4K main stream
# Which media server a department's player lands on (each speaks its own hook protocol).
SERVERS = (("zlmediakit", 0.55), ("mediamtx", 0.30), ("nginx-rtmp", 0.15))
REFUSED_PLAY_SHARE = 0.04
SHARED_TOKEN_SHARE = 0.01
GATEWAY_DEPARTMENT = "lz-data"  # the Big Data Bureau runs the city's media gateways
PLAYABLE_ACTIONS = ("live", "playback")
MAX_RETRIES = 8


class ReplayError(RuntimeError):
    """The API refused something the replay cannot do without (keys, the feed list)."""


@dataclass(frozen=True)
class DemoRequest:
    """One line of ``access-requests.ndjson``."""

    line: int
    requester: str
    purpose: str
    action: str
    duration_minutes: int
    emergency: bool
    selection: dict[str, Any]
    at: datetime | None = None  # when the seeded week has it asked


@dataclass
class ReplayedRequest:
    """A request as the API answered it, and what its owners did with it."""

    line: int
    request_id: str
    requester_department: str
    officer: int
    minutes: int
    emergency: bool
    initial: dict[str, int]
    purpose: str = ""
    action: str = ""
    at: datetime | None = None
    owner_decisions: dict[str, str] = field(default_factory=dict)  # owner -> approved|denied|...
    final: dict[str, Any] = field(default_factory=dict)  # the last AccessRequestOut seen


@dataclass(frozen=True)
class Play:
    """One player session planned on a media server."""

    server: str
    grant_id: str
    owner: str
    requester: str
    officer: int
    path: str
    token: str | None
    action: str  # live | playback
    client_ip: str
    session: str
    seconds: float
    bytes: int
    expect: str = "allowed"  # or the refusal the gateway must answer
    shared: bool = False  # the token passed on to a second machine


@dataclass
class TrafficSummary:
    """What the replay did; ``as_dict`` is what ``feedgrid up`` logs and keeps in its marker."""

    lines: int = 0
    replayed_lines: int = 0
    requests: int = 0
    refused_by_api: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    initial_feeds: Counter[str] = field(default_factory=Counter)
    feeds: Counter[str] = field(default_factory=Counter)
    owner_decisions: Counter[str] = field(default_factory=Counter)
    grants: int = 0
    retrievals: int = 0
    retrievals_by_pair: Counter[str] = field(default_factory=Counter)
    ended: int = 0
    bytes: int = 0
    seconds: float = 0.0
    refused_plays: Counter[str] = field(default_factory=Counter)
    shared_token_plays: int = 0
    unresolved_codes: int = 0
    officers: int = 0
    elapsed_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    replayed: list[ReplayedRequest] = field(default_factory=list)
    history: Any = None  # the recorded week's HistorySummary, once it is sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "replayed_lines": self.replayed_lines,
            "requests": self.requests,
            "refused_by_api": dict(sorted(self.refused_by_api.items())),
            "errors": self.errors,
            "initial_feeds": dict(sorted(self.initial_feeds.items())),
            "feeds": dict(sorted(self.feeds.items())),
            "owner_decisions": dict(sorted(self.owner_decisions.items())),
            "grants": self.grants,
            "retrievals": self.retrievals,
            "retrievals_by_pair": dict(sorted(self.retrievals_by_pair.items())),
            "ended": self.ended,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "refused_plays": dict(sorted(self.refused_plays.items())),
            "shared_token_plays": self.shared_token_plays,
            "unresolved_codes": self.unresolved_codes,
            "officers": self.officers,
            "elapsed_seconds": round(self.elapsed_seconds, 2),
            "phase_seconds": self.phase_seconds,
        }

    def one_line(self) -> str:
        refused = sum(self.refused_by_api.values())
        return (
            f"{self.replayed_lines} of the file's {self.lines} requests replayed, "
            f"{self.requests} accepted ({refused} refused by the API); feeds granted "
            f"{self.feeds['granted']}, pending {self.feeds['pending']}, denied "
            f"{self.feeds['denied']}; owners approved {self.owner_decisions['approved']}, "
            f"denied {self.owner_decisions['denied']}, left {self.owner_decisions['left pending']} "
            f"pending; {self.grants} grants, {self.retrievals} retrievals "
            f"({self.ended} ended, {sum(self.refused_plays.values())} refused plays) "
            f"in {self.elapsed_seconds:.1f}s{self._phases()}"
        )

    def _phases(self) -> str:
        """Where the replay's time went, e.g. " (access requests 19.6s, plays 11.7s)"."""
        if not self.phase_seconds:
            return ""
        return " (" + ", ".join(f"{n} {s:.1f}s" for n, s in self.phase_seconds.items()) + ")"


def pair_key(owner: str, requester: str) -> str:
    """How a sharing-matrix cell is named in the summary."""
    return f"{owner}>{requester}"


def read_requests(path: Path) -> list[DemoRequest]:
    requests = []
    for line, raw in enumerate(path.read_bytes().splitlines()):
        if not raw.strip():
            continue
        item = orjson.loads(raw)
        requests.append(
            DemoRequest(
                line=line,
                requester=str(item["requester"]),
                purpose=str(item["purpose"]),
                action=str(item["action"]),
                duration_minutes=int(item["duration_minutes"]),
                emergency=bool(item.get("emergency")),
                selection=dict(item["selection"]),
                at=datetime.fromisoformat(item["at"]) if item.get("at") else None,
            )
        )
    return requests


def _places_of(path: Path, codes: set[str]) -> dict[tuple[str, str], tuple[str, float, float]]:
    """(owner, code) -> (kind, lon, lat) of the features with these codes."""
    places: dict[tuple[str, str], tuple[str, float, float]] = {}
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        feature = orjson.loads(raw)
        properties = feature["properties"]
        if properties["code"] in codes:
            lon, lat = feature["geometry"]["coordinates"][:2]
            places[(properties["owner"], properties["code"])] = (
                properties["kind"],
                float(lon),
                float(lat),
            )
    return places


def _officer_counts(requests: Iterable[DemoRequest]) -> dict[str, int]:
    per_department = Counter(request.requester for request in requests)
    return {
        department: max(1, math.ceil(count / REQUESTS_PER_OFFICER))
        for department, count in per_department.items()
    }


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.05, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _refusal_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"http_{response.status_code}"
    if isinstance(body, dict):
        return str(body.get("code") or body.get("msg") or f"http_{response.status_code}")
    return f"http_{response.status_code}"


class TrafficReplay:
    """One replay of ``access-requests.ndjson`` against a running FeedGrid."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        directory: Path,
        *,
        seed: int = DEFAULT_SEED,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        live_played_grants: int = 0,
        progress: Progress | None = None,
    ) -> None:
        self.client = client
        self.live_played_grants = live_played_grants
        self.directory = directory
        self.seed = seed
        self.max_requests = max_requests
        self.limit = asyncio.Semaphore(concurrency)
        self.progress = progress
        self.summary = TrafficSummary()
        self.officer_keys: dict[str, list[str]] = {}
        self.owner_keys: dict[str, str] = {}
        self.gateway_keys: dict[str, str] = {}
        # Each department's requests go round its officers in the order they are sent.
        self.turn: Counter[str] = Counter()

    # ----------------------------------------------------------------------------- plumbing

    def _rand(self, *parts: object) -> Rand:
        return Rand(":".join(["feedgrid-demo", str(self.seed), "replay", *map(str, parts)]))

    async def _call(
        self, method: str, url: str, key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One API call; waits out 429s (the request limit is per identity) and short blips."""
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.limit:
            for attempt in range(MAX_RETRIES):
                try:
                    response = await self.client.request(method, url, headers=headers, **kwargs)
                except httpx.TransportError:
                    if attempt == MAX_RETRIES - 1:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                if response.status_code == 429 and attempt < MAX_RETRIES - 1:
                    await asyncio.sleep(_retry_after(response))
                    continue
                if response.status_code >= 500:
                    self.summary.errors += 1
                    log.warning(
                        "demo traffic: %s %s answered %s: %s",
                        method,
                        url.split("?")[0],
                        response.status_code,
                        response.text[:300],
                    )
                return response
        raise AssertionError("unreachable")

    async def _each(
        self, description: str, items: list[T], work: Callable[[T], Awaitable[None]]
    ) -> None:
        """Runs ``work`` over ``items`` (the semaphore bounds the calls), ticking a bar."""
        if not items:  # no bar: an empty one would tick its clock until the replay ends
            return
        task = self.progress.add_task(description, total=len(items)) if self.progress else None

        async def one(item: T) -> None:
            await work(item)
            if self.progress is not None and task is not None:
                self.progress.advance(task)

        began = time.perf_counter()
        await asyncio.gather(*(one(item) for item in items))
        phases = self.summary.phase_seconds
        phases[description] = round(phases.get(description, 0.0) + time.perf_counter() - began, 2)

    # ------------------------------------------------------------------------------ keys

    async def issue_keys(self, requests: list[DemoRequest], departments: list[str]) -> None:
        officers = _officer_counts(requests)
        self.summary.officers = sum(officers.values())
        gateway_department = (
            GATEWAY_DEPARTMENT if GATEWAY_DEPARTMENT in departments else departments[0]
        )
        wanted: list[tuple[str, str, str, str]] = []  # (what, index, department, role)
        for department, count in sorted(officers.items()):
            wanted += [("officer", str(i), department, "requester") for i in range(count)]
        wanted += [("owner", "", department, "dept_admin") for department in departments]
        wanted += [("gateway", server, gateway_department, "gateway") for server, _ in SERVERS]
        issued: dict[tuple[str, str, str], str] = {}

        async def issue(item: tuple[str, str, str, str]) -> None:
            what, index, department, role = item
            if what == "officer":
                name = f"demo duty officer {int(index) + 1}"
            elif what == "owner":
                name = "demo sharing desk"
            else:
                name = f"demo {index} gateway"
            answer = await self._call(
                "POST",
                f"/v1/departments/{department}/api-keys",
                json={"name": name, "roles": [role]},
            )
            if answer.status_code != 201:
                raise ReplayError(
                    f"API key for {department} ({role}): HTTP {answer.status_code}: "
                    f"{answer.text[:300]}"
                )
            issued[(what, index, department)] = answer.json()["key"]

        await self._each("access keys", wanted, issue)
        for department, count in officers.items():
            self.officer_keys[department] = [
                issued[("officer", str(i), department)] for i in range(count)
            ]
        self.owner_keys = {
            department: issued[("owner", "", department)] for department in departments
        }
        self.gateway_keys = {
            server: issued[("gateway", server, gateway_department)] for server, _ in SERVERS
        }

    # ----------------------------------------------------------------------- feed codes

    async def resolve_feed_codes(self, requests: list[DemoRequest]) -> dict[tuple[str, str], str]:
        """(owner, code) -> feed id for every code the requests name.

        The registry has no search by code, but ``GET /v1/feeds/points`` hands out every
        feed's id, owner, kind and position in one answer: a code's feed is the one of its
        owner and kind at its position. Where several feeds share a spot, a ``near`` search
        of a metre tells them apart by code.
        """
        wanted: set[str] = set()
        for request in requests:
            wanted.update(request.selection.get("feed_codes") or ())
        if not wanted:
            return {}
        places = await asyncio.to_thread(_places_of, self.directory / "feeds.ndjson", wanted)
        answer = await self._call("GET", "/v1/feeds/points", headers={"Accept-Encoding": "gzip"})
        if answer.status_code != 200:
            raise ReplayError(f"GET /v1/feeds/points: HTTP {answer.status_code}")
        points = answer.json()
        at_spot: dict[tuple[str, str, float, float], list[str]] = defaultdict(list)
        for i, feed_id in enumerate(points["ids"]):
            spot = (
                points["owners"][points["owner"][i]],
                points["kinds"][points["kind"][i]],
                round(points["lon"][i], 6),
                round(points["lat"][i], 6),
            )
            at_spot[spot].append(feed_id)
        resolved: dict[tuple[str, str], str] = {}
        crowded: list[tuple[str, str]] = []
        for (owner, code), (kind, lon, lat) in places.items():
            ids = at_spot.get((owner, kind, round(lon, 6), round(lat, 6)), [])
            if len(ids) == 1:
                resolved[(owner, code)] = ids[0]
            else:
                crowded.append((owner, code))

        async def by_search(owner_code: tuple[str, str]) -> None:
            owner, code = owner_code
            kind, lon, lat = places[owner_code]
            found = await self._call(
                "GET",
                "/v1/feeds",
                params={
                    "near": f"{lon},{lat},1",
                    "department": owner,
                    "kind": kind,
                    "limit": 1000,
                },
            )
            if found.status_code == 200:
                for item in found.json()["items"]:
                    if item["code"] == code:
                        resolved[owner_code] = item["id"]

        await self._each("feed codes", sorted(crowded), by_search)
        return resolved

    # --------------------------------------------------------------------------- requests

    def _body(
        self,
        request: DemoRequest,
        codes: dict[tuple[str, str], str],
        owners_of: dict[str, list[str]],
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {
            "purpose": request.purpose,
            "actions": [request.action],
            "duration_minutes": request.duration_minutes,
        }
        if request.emergency:
            body["emergency"] = True
            body["emergency_reason"] = "incident on the road network: live view of the scene"
        selection = request.selection
        if "feed_codes" in selection:
            # A code two departments registered (a planted duplicate) is read as the feed of
            # the owner that holds most of the request's codes: the request names one owner's
            # cameras.
            named = selection["feed_codes"]
            holders = Counter(owner for code in named for owner in owners_of.get(code, ()))
            if not holders:
                return None
            owner = min(holders, key=lambda candidate: (-holders[candidate], candidate))
            ids = []
            for code in named:
                if (owner, code) in codes:
                    ids.append(codes[(owner, code)])
                elif owners_of.get(code):
                    ids.append(codes[(owners_of[code][0], code)])
            body["feed_ids"] = list(dict.fromkeys(ids))
        else:
            search: dict[str, Any] = {"near": list(selection["near"]), "limit": SELECTION_LIMIT}
            if selection.get("kind"):
                search["kind"] = selection["kind"]
            if selection.get("department"):
                search["department"] = selection["department"]
            body["selection"] = search
        return body

    async def send_requests(
        self, requests: list[DemoRequest], codes: dict[tuple[str, str], str]
    ) -> list[ReplayedRequest]:
        owners_of: dict[str, list[str]] = defaultdict(list)
        for owner, code in sorted(codes):
            owners_of[code].append(owner)
        planned: list[tuple[DemoRequest, int, dict[str, Any] | None]] = []
        for request in requests:
            officer = self.turn[request.requester] % len(self.officer_keys[request.requester])
            self.turn[request.requester] += 1
            planned.append((request, officer, self._body(request, codes, owners_of)))
        replayed: dict[int, ReplayedRequest] = {}

        async def send(item: tuple[DemoRequest, int, dict[str, Any] | None]) -> None:
            request, officer, body = item
            if body is None:
                self.summary.refused_by_api["feed_codes_not_registered"] += 1
                return
            key = self.officer_keys[request.requester][officer]
            answer = await self._call("POST", "/v1/access-requests", key, json=body)
            if answer.status_code != 201:
                self.summary.refused_by_api[_refusal_code(answer)] += 1
                return
            created = answer.json()
            replayed[request.line] = ReplayedRequest(
                line=request.line,
                request_id=created["id"],
                requester_department=request.requester,
                officer=officer,
                minutes=request.duration_minutes,
                emergency=request.emergency,
                initial=dict(Counter(feed["outcome"] for feed in created["feeds"])),
                final=created,
                purpose=request.purpose,
                action=request.action,
                at=request.at,
            )

        await self._each("access requests", planned, send)
        ordered = [replayed[line] for line in sorted(replayed)]
        self.summary.requests += len(ordered)
        for item in ordered:
            self.summary.initial_feeds.update(item.initial)
        return ordered

    # --------------------------------------------------------------------- owner decisions

    def _owner_answer(self, replayed: ReplayedRequest, owner: str) -> str:
        draw = self._rand("decision", replayed.line, owner).random()
        if draw < APPROVE_SHARE:
            return "approved"
        if draw < APPROVE_SHARE + DENY_SHARE:
            return "denied"
        return "left pending"

    async def decide(self, replayed: list[ReplayedRequest]) -> None:
        """Each owner answers its part of each request; emergency grants are confirmed."""
        work: list[tuple[ReplayedRequest, str, str]] = []
        for item in replayed:
            waiting: dict[str, bool] = {}  # owner -> has pending (not only reviews)
            for feed in item.final["feeds"]:
                owner = feed["owner_department"]
                if owner and feed["outcome"] == "pending":
                    waiting[owner] = True
                elif owner and feed["review_required"]:
                    waiting.setdefault(owner, False)
            for owner, pending in sorted(waiting.items()):
                answer = self._owner_answer(item, owner) if pending else "approved"
                item.owner_decisions[owner] = answer
                self.summary.owner_decisions[answer if pending else "emergency confirmed"] += 1
                if answer != "left pending" and owner in self.owner_keys:
                    work.append((item, owner, answer))

        async def send_answer(job: tuple[ReplayedRequest, str, str]) -> None:
            item, owner, verdict = job
            verb = "approve" if verdict == "approved" else "deny"
            comment = (
                "approved for the stated purpose"
                if verb == "approve"
                else "not needed for the stated purpose"
            )
            response = await self._call(
                "POST",
                f"/v1/access-requests/{item.request_id}/{verb}",
                self.owner_keys[owner],
                json={"comment": comment},
            )
            if response.status_code == 200:
                # The answer shows the owner's own feeds only: merge them into the request.
                decided = {feed["feed_id"]: feed for feed in response.json()["feeds"]}
                item.final["feeds"] = [
                    decided.get(feed["feed_id"], feed) for feed in item.final["feeds"]
                ]
            else:
                item.owner_decisions[owner] = f"refused: {_refusal_code(response)}"

        # One owner's answers to one request never race each other: a request is decided by
        # each of its owners once, and different owners touch different feeds.
        await self._each("owner decisions", work, send_answer)
        for item in replayed:
            self.summary.feeds.update(feed["outcome"] for feed in item.final["feeds"])

    # ------------------------------------------------------------------------- retrievals

    async def fetch_tokens(
        self, replayed: list[ReplayedRequest]
    ) -> list[tuple[ReplayedRequest, str, str, dict[str, Any]]]:
        """The retrieval answers of the grants a department will use, in file order."""
        grants: list[tuple[ReplayedRequest, str, str]] = []  # (request, grant id, owner)
        seen: set[str] = set()
        for item in replayed:
            for feed in sorted(item.final["feeds"], key=lambda f: f["owner_department"] or ""):
                grant_id = feed.get("grant_id")
                if feed["outcome"] == "granted" and grant_id and grant_id not in seen:
                    seen.add(grant_id)
                    grants.append((item, grant_id, feed["owner_department"]))
        self.summary.grants = len(grants)
        used = [
            (item, grant_id, owner)
            for item, grant_id, owner in grants
            if self._rand("use", item.line, owner).chance(PLAYED_GRANT_SHARE)
        ]
        if self.live_played_grants > 0:
            # The latest requests of the week are played now, through the hooks; the week's
            # earlier plays are in its recorded log (deploy/demo_history.py).
            used = used[-self.live_played_grants :]
        answers: dict[str, dict[str, Any]] = {}

        async def fetch(job: tuple[ReplayedRequest, str, str]) -> None:
            item, grant_id, _ = job
            key = self.officer_keys[item.requester_department][item.officer]
            response = await self._call("GET", f"/v1/grants/{grant_id}/retrieval", key)
            if response.status_code == 200:
                answers[grant_id] = response.json()

        await self._each("retrieval tokens", used, fetch)
        return [
            (item, grant_id, owner, answers[grant_id])
            for item, grant_id, owner in used
            if grant_id in answers
        ]

    def plan_plays(
        self, tokens: list[tuple[ReplayedRequest, str, str, dict[str, Any]]]
    ) -> list[Play]:
        """Sessions on the media servers, drawn in file order: same files, same plays.

        Besides the granted plays: now and then a player without its token or a token tried on
        another feed (refused), or a token passed to a second machine (allowed, and an alert);
        at least two refusals and one shared token whenever there are plays enough, so even a
        small city shows them.
        """
        plays: list[Play] = []
        opened: dict[tuple[str, int], set[str]] = defaultdict(set)
        for item, grant_id, owner, retrieval in tokens:
            actions = [action for action in PLAYABLE_ACTIONS if action in retrieval["actions"]]
            if not actions:
                continue  # snapshots, downloads, PTZ and sensor reads have no player session
            rand = self._rand("play", item.line, owner)
            feeds = sorted(retrieval["feeds"], key=lambda feed: feed["media_path"])
            officer = (item.requester_department, item.officer)
            for feed in rand.sample(feeds, rand.choice(FEEDS_PLAYED)):
                if len(opened[officer]) >= MAX_FEEDS_PER_OFFICER:
                    break
                opened[officer].add(feed["media_path"])
                action = rand.choice(actions)
                server = _pick_server(rand.random())
                if action == "playback":
                    server = "mediamtx"  # the only gateway here that serves recordings
                token = feed["compact_token"] if server == "nginx-rtmp" else feed["token"]
                if token is None:  # no compact form: the player uses RTSP instead
                    server, token = "zlmediakit", feed["token"]
                seconds = round(rand.uniform(20.0, min(item.minutes, 30) * 60.0), 1)
                plays.append(
                    Play(
                        server=server,
                        grant_id=grant_id,
                        owner=owner,
                        requester=item.requester_department,
                        officer=item.officer,
                        path=feed["media_path"],
                        token=token,
                        action=action,
                        client_ip=self._client_ip(item.requester_department, item.officer),
                        session="",
                        seconds=seconds,
                        bytes=int(seconds * rand.choice(MEGABITS_PER_SECOND) * 125_000),
                    )
                )
        paths = sorted({play.path for play in plays})
        everything: list[Play] = []
        for number, play in enumerate(plays):
            everything.append(play)
            rand = self._rand("misuse", number)
            if rand.chance(SHARED_TOKEN_SHARE) or number == 2:
                second_machine = self._client_ip(play.requester, play.officer + 100)
                everything.append(replace(play, client_ip=second_machine, shared=True))
            if rand.chance(REFUSED_PLAY_SHARE) or number < 2:
                everything.append(self._refused(play, paths, number))
        return [replace(play, session=f"demo-{i}") for i, play in enumerate(everything)]

    @staticmethod
    def _refused(play: Play, paths: list[str], number: int) -> Play:
        """A play the gateway must refuse: a bookmarked URL without its token, or a token
        tried on another camera."""
        others = [path for path in paths if path != play.path]
        if number % 2 == 0 or not others:
            return replace(play, server="zlmediakit", token=None, expect="missing_token")
        return replace(
            play,
            server="mediamtx",
            path=others[number % len(others)],
            expect="token_for_another_feed",
        )

    def _client_ip(self, department: str, officer: int) -> str:
        departments = sorted(self.officer_keys)
        index = departments.index(department) if department in departments else 0
        return f"10.{20 + index}.{officer // 200}.{officer % 200 + 20}"

    async def play(self, plays: list[Play]) -> None:
        async def session(play: Play) -> None:
            allowed, code = await self._start(play)
            if allowed:
                self.summary.retrievals += 1
                self.summary.retrievals_by_pair[pair_key(play.owner, play.requester)] += 1
                self.summary.shared_token_plays += play.shared
                if await self._end(play):
                    self.summary.ended += 1
                    if play.server == "zlmediakit":
                        self.summary.bytes += play.bytes
                        self.summary.seconds += play.seconds
            else:
                self.summary.refused_plays[code] += 1

        await self._each("plays", plays, session)

    async def _start(self, play: Play) -> tuple[bool, str]:
        gateway = self.gateway_keys[play.server]
        app, stream = play.path.split("/", 1)
        if play.server == "mediamtx":
            response = await self._call(
                "POST",
                "/v1/hooks/mediamtx/auth",
                gateway,
                json={
                    "user": "" if play.token else "viewer",
                    "password": "",
                    "token": play.token or "",
                    "ip": play.client_ip,
                    "action": "read" if play.action == "live" else "playback",
                    "path": play.path,
                    "protocol": "rtsp",
                    "id": play.session,
                    "query": "",
                },
            )
            return response.status_code == 200, _refusal_code(response)
        if play.server == "zlmediakit":
            response = await self._call(
                "POST",
                "/v1/hooks/zlmediakit/on_play",
                gateway,
                json={
                    "schema": "rtsp",
                    "vhost": "__defaultVhost__",
                    "app": app,
                    "stream": stream,
                    "params": f"token={play.token}" if play.token else "",
                    "ip": play.client_ip,
                    "port": 50_000,
                    "id": play.session,
                    "mediaServerId": "demo-zlmediakit",
                },
            )
            if response.status_code != 200:
                return False, f"http_{response.status_code}"
            answer = response.json()
            return answer.get("code") == 0, str(answer.get("msg"))
        form = {
            "call": "play",
            "addr": play.client_ip,
            "clientid": play.session,
            "app": app,
            "name": stream,
            "tcUrl": f"rtmp://gateway.demo:1935/{app}",
            "token": play.token or "",
        }
        response = await self._call("POST", "/v1/hooks/nginx-rtmp/on_play", gateway, data=form)
        return response.status_code == 200, _refusal_code(response)

    async def _end(self, play: Play) -> bool:
        """The session's end: ZLMediaKit reports bytes and seconds, nginx-rtmp that it is done
        (MediaMTX has no end hook: its sessions count as started only)."""
        gateway = self.gateway_keys[play.server]
        app, stream = play.path.split("/", 1)
        if play.server == "zlmediakit":
            response = await self._call(
                "POST",
                "/v1/hooks/zlmediakit/on_flow_report",
                gateway,
                json={
                    "totalBytes": play.bytes,
                    "duration": play.seconds,
                    "player": True,
                    "ip": play.client_ip,
                    "id": play.session,
                    "app": app,
                    "stream": stream,
                    "params": f"token={play.token}",
                    "mediaServerId": "demo-zlmediakit",
                },
            )
            return response.status_code == 200
        if play.server == "nginx-rtmp":
            form = {
                "call": "play_done",
                "addr": play.client_ip,
                "clientid": play.session,
                "app": app,
                "name": stream,
                "token": play.token or "",
            }
            response = await self._call(
                "POST", "/v1/hooks/nginx-rtmp/on_play_done", gateway, data=form
            )
            return response.status_code == 200
        return False

    # ---------------------------------------------------------------------------- the run

    async def run(self, first_wave: int = 0, on_wave: WaveDone | None = None) -> TrafficSummary:
        """Sends the requests and the owners' answers in waves, then plays the grants used.

        With ``first_wave`` > 0 a spread sample of that many requests (the week's rhythm, a
        thinner week) goes first and the rest after it: ``on_wave`` hears of each wave's
        answered requests as soon as its owners have answered, so what is built from them (the
        recorded week) starts flowing while the rest is replayed. Each wave's ``on_wave`` runs
        beside the next wave, after the previous wave's has ended; the replay ends when the
        last has (its error is the replay's).
        """
        began = time.perf_counter()
        requests = read_requests(self.directory / "access-requests.ndjson")
        self.summary.lines = len(requests)
        departments = [
            str(item["code"])
            for item in orjson.loads((self.directory / "departments.json").read_bytes())
        ]
        requests = spread_sample(
            [request for request in requests if request.requester in departments],
            self.max_requests,
        )
        self.summary.replayed_lines = len(requests)
        if requests:
            await self.issue_keys(requests, departments)
            codes = await self.resolve_feed_codes(requests)
            wanted = {
                code for request in requests for code in request.selection.get("feed_codes") or ()
            }
            self.summary.unresolved_codes = len(wanted - {code for _, code in codes})
            latest = max((request.at for request in requests if request.at), default=None)
            replayed: list[ReplayedRequest] = []
            told: asyncio.Task[None] | None = None
            try:
                for number, wave in enumerate(waves(requests, first_wave)):
                    answered = await self.send_requests(wave, codes)
                    await self.decide(answered)
                    replayed += answered
                    if on_wave is not None:
                        told = asyncio.create_task(
                            _after(told, on_wave, answered, latest, number == 0)
                        )
                replayed.sort(key=lambda item: item.line)
                tokens = await self.fetch_tokens(replayed)
                await self.play(self.plan_plays(tokens))
                if told is not None:
                    await told
            finally:
                if told is not None:  # ended, and its error (if the replay's is another) read
                    told.cancel()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await told
            self.summary.replayed = replayed
        self.summary.elapsed_seconds = time.perf_counter() - began
        return self.summary


WaveDone = Callable[[list["ReplayedRequest"], datetime | None, bool], Awaitable[None]]


async def _after(
    previous: asyncio.Task[None] | None,
    on_wave: WaveDone,
    answered: list[ReplayedRequest],
    latest: datetime | None,
    first: bool,
) -> None:
    """A wave's ``on_wave`` once the previous wave's has ended: the parts go out in order."""
    if previous is not None:
        await previous
    await on_wave(answered, latest, first)


def waves(requests: list[DemoRequest], first: int) -> list[list[DemoRequest]]:
    """The requests in the order they are sent: ``first`` of them spread over the file, then
    the others in file order (one wave when ``first`` is 0 or covers them all)."""
    if first <= 0 or first >= len(requests):
        return [requests]
    sample = spread_sample(requests, first)
    chosen = {id(request) for request in sample}
    return [sample, [request for request in requests if id(request) not in chosen]]


def spread_sample(items: list[T], count: int) -> list[T]:
    """``count`` of ``items`` evenly spaced over the list (all of them when count is 0 or
    larger): a thinner week with the same rhythm, not its first day."""
    if count <= 0 or count >= len(items):
        return items
    return [items[(k * len(items)) // count] for k in range(count)]


def _pick_server(draw: float) -> str:
    for name, share in SERVERS:
        if draw < share:
            return name
        draw -= share
    return SERVERS[-1][0]


async def replay_demo_traffic(
    client: httpx.AsyncClient,
    directory: Path,
    *,
    seed: int = DEFAULT_SEED,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    live_played_grants: int = 0,
    progress: bool = True,
    first_wave: int = 0,
    on_wave: WaveDone | None = None,
) -> TrafficSummary:
    """Replays ``directory/access-requests.ndjson`` (``max_requests`` of it, evenly spread;
    0 for all) through the API ``client`` talks to; with ``live_played_grants`` > 0 only the
    grants of that many of the latest requests are played (the rest of the week's plays are
    the recorded week's); ``first_wave`` and ``on_wave`` as in :meth:`TrafficReplay.run`.

    ``client`` carries the city-admin token (it issues the departments' keys) and the API's
    base URL. Returns what was done; refusals the API answers with a 4xx are counted, not
    raised (the generator deliberately asks for feeds the policy must refuse).
    """
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        replay = TrafficReplay(
            client,
            directory,
            seed=seed,
            concurrency=concurrency,
            max_requests=max_requests,
            live_played_grants=live_played_grants,
            progress=bar,
        )
        return await replay.run(first_wave, on_wave)
