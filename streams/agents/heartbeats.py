"""heartbeat agent: online/offline transitions, to ClickHouse and back to the registry.

A heartbeat brings a feed online (or offline, when the device reports so); a periodic scan
declares offline every online feed silent for ``heartbeat_silence_seconds``, as of the moment
the silence ran out. Each transition becomes a ``feed_status`` row, an update of the registry's
feed status, and, for a feed going offline while a grant on it is in force, an alert.

The liveness table holds each feed's status and last sighting; sightings are written to it at
most every half silence period per feed (changelog volume), the freshest ones live in memory.
After a restart the scan waits one silence period, so feeds are not declared offline before
their heartbeats had a chance to arrive.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.agents.batching import consume_in_batches
from streams.agents.common import dead_letter, store_and_publish_alerts
from streams.context import StreamContext
from streams.dead_letter import InvalidMessage
from streams.decoding import decode_heartbeat
from streams.publisher import Outgoing
from streams.registry_status import LivenessChange
from streams.rules import RaisedAlert, grants_in_force, offline_alerts

log = logging.getLogger("feedgrid.streams.liveness")
# A scan of a million feeds yields to the event loop this often (embedded: the API shares it).
SCAN_YIELD_EVERY = 5_000

AGENT_NAME = "heartbeats"
TRANSITION_NAMESPACE = uuid.UUID("0b8f5c43-93a4-4c1e-b2a4-3f5d1f0d2c77")


@dataclass(frozen=True)
class Transition:
    feed_id: str
    status: str
    previous_status: str
    changed_at: float
    last_seen: float | None
    reason: str

    @property
    def transition_id(self) -> uuid.UUID:
        return uuid.uuid5(
            TRANSITION_NAMESPACE, f"{self.feed_id}:{self.status}:{round(self.changed_at * 1000)}"
        )


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class LivenessTracker:
    def __init__(self, context: StreamContext) -> None:
        self.context = context
        self.silence = context.tuning.heartbeat_silence_seconds
        self.recent_seen: dict[str, float] = {}
        self.pending_registry: dict[str, LivenessChange] = {}
        self.started_at = time.time()
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ heartbeats

    async def handle(self, events: Sequence[Any]) -> None:
        transitions: list[Transition] = []
        rejected: list[Outgoing] = []
        async with self._lock:
            for event in events:
                try:
                    heartbeat = decode_heartbeat(event.value)
                except InvalidMessage as error:
                    rejected.append(dead_letter(self.context, event.message, error.reason))
                    continue
                transition = self._observe(
                    heartbeat.data.feed_id,
                    heartbeat.data.status,
                    heartbeat.data.seen_at.timestamp(),
                )
                if transition is not None:
                    transitions.append(transition)
            await self._apply(transitions)
            await self._flush_registry()
        await self.context.publisher.publish(rejected)

    def _state(self, feed_id: str) -> dict[str, Any] | None:
        return self.context.tables.liveness.get(feed_id)

    def _last_seen(self, feed_id: str, state: dict[str, Any] | None) -> float | None:
        stored = state.get("last_seen") if state else None
        recent = self.recent_seen.get(feed_id)
        candidates = [value for value in (stored, recent) if value is not None]
        return max(candidates) if candidates else None

    def _observe(self, feed_id: str, status: str, seen: float) -> Transition | None:
        state = self._state(feed_id)
        previous = state["status"] if state else "unknown"
        last_seen = self._last_seen(feed_id, state)
        if last_seen is not None and seen < last_seen:
            return None  # out of order: a newer sighting is known
        if state is not None and seen < float(state.get("changed_at") or 0):
            return None  # older than the last transition
        if status == "offline":
            if previous == "offline":
                return None
            return Transition(feed_id, "offline", previous, seen, seen, "reported")
        if previous != "online":
            if time.time() - seen > self.silence:
                self.recent_seen[feed_id] = seen
                return None  # a stale heartbeat does not bring a feed back
            return Transition(feed_id, "online", previous, seen, seen, "heartbeat")
        self.recent_seen[feed_id] = seen
        stored_seen = float(state.get("last_seen") or 0) if state else 0.0
        if seen - stored_seen >= self.silence / 2:
            self.context.tables.liveness[feed_id] = {**(state or {}), "last_seen": seen}
        return None

    # ------------------------------------------------------------------ silence

    async def scan(self, now: float | None = None) -> int:
        """Declares offline each online feed silent for the configured period."""
        now = time.time() if now is None else now
        async with self._lock:
            transitions = []
            if now - self.started_at >= self.silence:
                for index, (feed_id, state) in enumerate(self.context.tables.liveness.items()):
                    if index % SCAN_YIELD_EVERY == SCAN_YIELD_EVERY - 1:
                        await asyncio.sleep(0)  # the API may share this event loop
                    if state.get("status") != "online":
                        continue
                    last_seen = self._last_seen(feed_id, state)
                    if last_seen is None or last_seen + self.silence > now:
                        continue
                    transitions.append(
                        Transition(
                            feed_id,
                            "offline",
                            "online",
                            last_seen + self.silence,
                            last_seen,
                            "silence",
                        )
                    )
            await self._apply(transitions)
            await self._flush_registry()
        return len(transitions)

    # ------------------------------------------------------------------ effects

    async def _apply(self, transitions: Sequence[Transition]) -> None:
        if not transitions:
            return
        rows = []
        alerts: list[RaisedAlert] = []
        for transition in transitions:
            feed = self.context.feed(transition.feed_id) or {}
            owner = str(feed.get("owner_department") or "")
            changed_at = _moment(transition.changed_at)
            rows.append(
                {
                    "transition_id": transition.transition_id,
                    "feed_id": transition.feed_id,
                    "owner_department": owner,
                    "status": transition.status,
                    "previous_status": transition.previous_status,
                    "changed_at": changed_at,
                    "last_seen_at": _moment(transition.last_seen) if transition.last_seen else None,
                    "reason": transition.reason,
                }
            )
            if transition.status == "offline":
                grants = self.context.tables.grants.get(transition.feed_id)
                if grants is not None:
                    in_force = grants_in_force(grants, transition.changed_at)
                    alerts.extend(offline_alerts(transition.feed_id, owner, changed_at, in_force))
            self.context.tables.liveness[transition.feed_id] = {
                "status": transition.status,
                "last_seen": transition.last_seen,
                "changed_at": transition.changed_at,
            }
            self.recent_seen.pop(transition.feed_id, None)
            self.pending_registry[transition.feed_id] = LivenessChange(
                transition.feed_id,
                transition.status,
                changed_at,
                _moment(transition.last_seen) if transition.last_seen else None,
            )
        await self.context.sink.write("feed_status", rows)
        await store_and_publish_alerts(self.context, alerts)
        log.info(
            "liveness: %d transitions (%d offline)",
            len(transitions),
            sum(1 for transition in transitions if transition.status == "offline"),
        )

    async def _flush_registry(self) -> None:
        """Registry updates are derived state: a failure keeps them for the next scan."""
        if not self.pending_registry:
            return
        changes = list(self.pending_registry.values())
        try:
            await self.context.registry.write(changes)
        except Exception as error:
            log.warning("registry status not updated yet (%d feeds): %s", len(changes), error)
            return
        for change in changes:
            if self.pending_registry.get(change.feed_id) is change:
                del self.pending_registry[change.feed_id]


def register(context: StreamContext) -> None:
    tracker = LivenessTracker(context)

    @context.app.agent(context.topics.heartbeats, name=AGENT_NAME, concurrency=1)
    async def track_heartbeats(stream: Any) -> None:
        await consume_in_batches(stream, context.tuning, AGENT_NAME, tracker.handle)

    @context.app.timer(interval=context.tuning.liveness_scan_seconds, name="liveness-scan")
    async def scan_for_silent_feeds() -> None:
        await tracker.scan()

    context.agents[AGENT_NAME] = track_heartbeats
    context.agents["liveness-tracker"] = tracker
