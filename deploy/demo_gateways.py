"""The demo city's gateways: liveness reports through the real heartbeat path, while `up` runs.

Each owner department runs a gateway (an API key with the ``gateway`` role) that reports its
feeds with ``POST /v1/heartbeats``, in batches, every ``interval`` seconds, as a department's
platform or NVR does. The API checks and produces them to the heartbeats topic; the stream
worker decides online/offline transitions; ``registry_api/feeds/liveness.py`` writes them to
the registry. Nothing here touches the registry or ClickHouse.

So that the liveness panels tell a true story, not all feeds behave:

- most feeds report every round (they go online within a round of the start: the first round
  goes at once, later ones are spread over the interval in batches of ``SPREAD_BATCH_ITEMS``,
  as devices report on clocks of their own rather than in one city-wide burst);
- about one in sixteen never reports (catalog entries with no live resource: ``unknown``);
- about one in five hundred flaps: its device reports offline, then online again, every
  ``FLAP_ROUNDS`` rounds;
- one district's NVR (the feeds of one owner in one part of the city) goes dark a few minutes
  after the start, stays silent longer than the silence limit (the worker declares its feeds
  offline, and raises ``feed_offline_while_granted`` where a grant is in force), then comes back.

Which feed does what is drawn from its id, so every start of the same city behaves the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger("feedgrid.demo.gateways")

# GB/T 28181's default keepalive period (a device silent for three of them is offline; the
# worker's silence limit, 120 s by default, is two).
DEFAULT_INTERVAL_SECONDS = 60.0
BATCH_ITEMS = 10_000  # well under the API's 20,000 a batch (the first round)
SPREAD_BATCH_ITEMS = 500  # later rounds: small batches spread over this share of the interval
SPREAD_SHARE = 0.9
NEVER_REPORTS = 1 / 16
FLAPS = 1 / 500
FLAP_ROUNDS = 10
# The NVR goes dark this long after the gateways start, for this long (longer than the
# worker's silence limit, 120 s by default, so its feeds are declared offline).
DARK_AFTER_SECONDS = 180.0
DARK_FOR_SECONDS = 420.0


def _draw(feed_id: str, what: str) -> float:
    digest = hashlib.blake2b(f"{what}:{feed_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class CityGateways:
    """Which feeds each department's gateway reports, and how."""

    reporting: dict[str, list[str]] = field(default_factory=dict)  # owner -> steady feeds
    flapping: dict[str, list[str]] = field(default_factory=dict)
    never: int = 0
    dark_owner: str = ""
    dark_feeds: set[str] = field(default_factory=set)

    @classmethod
    def plan(cls, points: dict[str, Any]) -> CityGateways:
        plan = cls()
        owners = points["owners"]
        by_owner: dict[str, list[tuple[str, float, float]]] = {}
        for i, feed_id in enumerate(points["ids"]):
            owner = owners[points["owner"][i]]
            if _draw(feed_id, "never") < NEVER_REPORTS:
                plan.never += 1
                continue
            if _draw(feed_id, "flap") < FLAPS:
                plan.flapping.setdefault(owner, []).append(feed_id)
                continue
            by_owner.setdefault(owner, []).append((feed_id, points["lon"][i], points["lat"][i]))
            plan.reporting.setdefault(owner, []).append(feed_id)
        # The district: the biggest owner's feeds in the south-west quarter of its extent.
        if by_owner:
            owner = max(sorted(by_owner), key=lambda code: len(by_owner[code]))
            feeds = by_owner[owner]
            lons = sorted(lon for _, lon, _ in feeds)
            lats = sorted(lat for _, _, lat in feeds)
            west, south = lons[len(lons) // 4], lats[len(lats) // 4]
            plan.dark_owner = owner
            plan.dark_feeds = {
                feed_id for feed_id, lon, lat in feeds if lon <= west and lat <= south
            }
        return plan

    def describe(self) -> str:
        steady = sum(len(feeds) for feeds in self.reporting.values())
        flapping = sum(len(feeds) for feeds in self.flapping.values())
        return (
            f"{steady} feeds report, {flapping} flap, {self.never} never report; "
            f"{len(self.dark_feeds)} of {self.dark_owner}'s feeds behind one NVR go dark "
            f"after {DARK_AFTER_SECONDS:.0f} s for {DARK_FOR_SECONDS:.0f} s"
        )


class GatewaySimulator:
    """Sends the rounds of reports until stopped."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        keys: dict[str, str],
        plan: CityGateways,
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        dark_after: float = DARK_AFTER_SECONDS,
        dark_for: float = DARK_FOR_SECONDS,
    ) -> None:
        self.client = client
        self.keys = keys
        self.plan = plan
        self.interval = interval
        self.dark_after = dark_after
        self.dark_for = dark_for
        self.rounds = 0
        self.reports = 0
        self.failures = 0
        self.started = time.monotonic()

    def dark(self) -> bool:
        elapsed = time.monotonic() - self.started
        return self.dark_after <= elapsed < self.dark_after + self.dark_for

    def reports_of(self, owner: str, round_number: int) -> list[dict[str, str]]:
        dark = self.plan.dark_feeds if owner == self.plan.dark_owner and self.dark() else set()
        items = [
            {"feed_id": feed_id, "status": "online"}
            for feed_id in self.plan.reporting.get(owner, ())
            if feed_id not in dark
        ]
        flap_status = "online" if (round_number // FLAP_ROUNDS) % 2 == 0 else "offline"
        items += [
            {"feed_id": feed_id, "status": flap_status}
            for feed_id in self.plan.flapping.get(owner, ())
        ]
        return items

    async def send_round(self) -> None:
        """One round of every gateway's reports. The first goes at once (the city comes online
        within a round of the start); later ones are spread over the interval in small
        batches, as a city's devices report on clocks of their own, not in one burst."""
        number = self.rounds
        self.rounds += 1
        owners = [
            owner
            for owner in sorted(set(self.plan.reporting) | set(self.plan.flapping))
            if owner in self.keys
        ]
        size = BATCH_ITEMS if number == 0 else SPREAD_BATCH_ITEMS
        batches: list[tuple[float, str, list[dict[str, str]]]] = []
        for owner in owners:
            items = self.reports_of(owner, number)
            starts = range(0, len(items), size)
            # Each gateway's batches at even places of the round: the gateways interleave.
            batches += [
                (k / len(starts), owner, items[start : start + size])
                for k, start in enumerate(starts)
            ]
            # The gateways share the API's event loop in `feedgrid up`: a whole city's reports
            # built in one go held it for ~0.1 s each round (infra/loop_watch's reports).
            await asyncio.sleep(0)
        batches.sort(key=lambda batch: (batch[0], batch[1]))
        if number == 0:
            failed: set[str] = set()
            await asyncio.gather(*(self._send_in_turn(owner, batches, failed) for owner in owners))
            return
        began = time.monotonic()
        spacing = self.interval * SPREAD_SHARE / max(1, len(batches))
        failed = set()
        for k, (_, owner, batch) in enumerate(batches):
            if owner not in failed and not await self._post(owner, batch):
                failed.add(owner)
            await asyncio.sleep(max(0.0, began + (k + 1) * spacing - time.monotonic()))

    async def _send_in_turn(
        self, owner: str, batches: list[tuple[float, str, list[dict[str, str]]]], failed: set[str]
    ) -> None:
        for _, batch_owner, batch in batches:
            if batch_owner == owner and owner not in failed and not await self._post(owner, batch):
                failed.add(owner)

    async def _post(self, owner: str, batch: list[dict[str, str]]) -> bool:
        """One batch of a gateway's reports; False when the rest of its round is given up."""
        try:
            answer = await self.client.post(
                "/v1/heartbeats",
                json={"items": batch, "reporter": f"{owner} demo gateway"},
                headers={"Authorization": f"Bearer {self.keys[owner]}"},
            )
        except httpx.HTTPError as error:
            self.failures += 1
            log.info("demo gateway %s: no answer (%s); next round", owner, error)
            return False
        if answer.status_code != 200:
            self.failures += 1
            log.info("demo gateway %s: HTTP %s; next round", owner, answer.status_code)
            return False
        self.reports += answer.json()["accepted"]
        return True

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        was_dark = False
        while not stop.is_set():
            began = time.monotonic()
            dark = self.dark()
            if dark != was_dark:
                log.info(
                    "demo: the NVR of %s's district %s (%d feeds)",
                    self.plan.dark_owner,
                    "goes dark" if dark else "is back",
                    len(self.plan.dark_feeds),
                )
                was_dark = dark
            await self.send_round()
            wait = max(0.5, self.interval - (time.monotonic() - began))
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass


async def issue_gateway_keys(client: httpx.AsyncClient, owners: list[str]) -> dict[str, str]:
    """One ``gateway`` key per owner department (the city-admin ``client`` issues them)."""
    keys: dict[str, str] = {}
    for owner in owners:
        answer = await client.post(
            f"/v1/departments/{owner}/api-keys",
            json={"name": "demo liveness gateway", "roles": ["gateway"]},
        )
        if answer.status_code != 201:
            raise RuntimeError(
                f"gateway key for {owner}: HTTP {answer.status_code}: {answer.text[:200]}"
            )
        keys[owner] = answer.json()["key"]
    return keys
