"""The demo city's recorded week: its access log, replayed into Kafka with its own times.

A new installation has no past, so every chart would start at the minute ``feedgrid up``
ran. The seeded requests (``access-requests.ndjson``) each carry the moment of the week they
were asked; this module turns the live replay's answers (which feeds each request named,
what the policy and the owners decided) into the log that week would have left, each event
stamped with its own time, the week ending a few minutes before now:

- ``access.requested`` and the policy's ``access.decided`` at the request's moment; an owner's
  answer minutes to days later (a few after the department's deadline); ``grant.issued`` with
  its window from the decision;
- the media servers' ``retrieval.started`` / ``ended`` / ``denied`` for the grants that were
  used, inside their windows, with bytes and seconds;
- the misuse the stream agents' rules look for: tokens passed to a second machine
  (``token_multiple_ips``), a requester opening more feeds in a minute than the harvesting
  limit allows (``bulk_harvesting``), plays under a grant after its window closed
  (``retrieval_outside_grant``), some of each in the last day.

The events go to the ``access-events`` topic as a gateway or a platform replaying its log
would send them, with the source ``/feedgrid/demo/recorded-week`` and ids of their own (none
of them names a request or grant of this registry): the stream worker validates, enriches,
judges and stores them like any other event; nothing is written to the registry or to
ClickHouse behind the worker's back, and the API offers no way to back-date anything.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from deploy.demo_traffic import (
    FEEDS_PLAYED,
    MEGABITS_PER_SECOND,
    PLAYED_GRANT_SHARE,
    REFUSED_PLAY_SHARE,
    ReplayedRequest,
    pair_key,
)
from deploy.seed.city import Rand
from schemas.events import SCHEMA_ACCESS_EVENT_V1, EventType, encode_cloud_event
from schemas.settings import Settings
from schemas.topics import ACCESS_EVENTS, topic_name

log = logging.getLogger("feedgrid.demo")

HISTORY_SOURCE = "/feedgrid/demo/recorded-week"
HISTORY_NAMESPACE = uuid.UUID("0b7f4f0e-3c55-4c1e-9d4a-6b1f61c2a8d3")
WEEK = timedelta(days=7)
# The recorded week ends this long before the replay, so it never overlaps the live minutes.
WEEK_ENDS_BEFORE_NOW = timedelta(minutes=5)
PLAYABLE = ("live", "playback")
# An owner answers within minutes to a day or two; this share answers after five days.
LATE_ANSWER_SHARE = 0.08
# How many of each kind of misuse the week holds, and how many of them fall in its last day.
SHARED_TOKENS = 6
OUTSIDE_WINDOW_PLAYS = 5
HARVESTS = 2
MISUSE_IN_LAST_DAY = 2


@dataclass
class HistorySummary:
    """What the recorded week holds (``feedgrid up`` logs it; tests compare the analytics)."""

    start: datetime | None = None
    end: datetime | None = None
    events: int = 0
    requests: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    grants: int = 0
    retrievals: int = 0
    retrievals_by_pair: Counter[str] = field(default_factory=Counter)
    attributed_denials: int = 0
    unattributed_denials: int = 0
    bytes: int = 0
    misuse: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "events": self.events,
            "requests": self.requests,
            "decisions": dict(sorted(self.decisions.items())),
            "grants": self.grants,
            "retrievals": self.retrievals,
            "attributed_denials": self.attributed_denials,
            "unattributed_denials": self.unattributed_denials,
            "bytes": self.bytes,
            "misuse": dict(sorted(self.misuse.items())),
        }

    def __add__(self, other: HistorySummary) -> HistorySummary:
        """Two parts of one week (the waves of a replay) as one."""
        starts = [time for time in (self.start, other.start) if time is not None]
        ends = [time for time in (self.end, other.end) if time is not None]
        return HistorySummary(
            start=min(starts, default=None),
            end=max(ends, default=None),
            events=self.events + other.events,
            requests=self.requests + other.requests,
            decisions=self.decisions + other.decisions,
            grants=self.grants + other.grants,
            retrievals=self.retrievals + other.retrievals,
            retrievals_by_pair=self.retrievals_by_pair + other.retrievals_by_pair,
            attributed_denials=self.attributed_denials + other.attributed_denials,
            unattributed_denials=self.unattributed_denials + other.unattributed_denials,
            bytes=self.bytes + other.bytes,
            misuse=self.misuse + other.misuse,
        )


@dataclass(frozen=True)
class _Event:
    time: datetime
    type: EventType
    data: dict[str, Any]


@dataclass(frozen=True)
class _Grant:
    grant_id: str
    feed_ids: tuple[str, ...]
    owner: str
    requester: str
    user: str
    officer: int
    actions: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime
    line: int


def _id(*parts: object) -> str:
    return uuid.uuid5(HISTORY_NAMESPACE, ":".join(map(str, parts))).hex


class RecordedWeek:
    """Builds the week's events from the live replay's answers (deterministic per seed).

    A replay sent in waves records its week in as many parts, each from its wave's answers:
    all parts take the same ``now`` and the same ``latest`` request time (the whole file's,
    so a request falls at the same moment whichever wave it was in), and only one of them
    (``misuse``) adds the misuse cases.
    """

    def __init__(
        self,
        replayed: list[ReplayedRequest],
        now: datetime,
        seed: int,
        *,
        latest: datetime | None = None,
        misuse: bool = True,
    ) -> None:
        self.replayed = [item for item in replayed if item.at is not None]
        self.seed = seed
        self.end = now - WEEK_ENDS_BEFORE_NOW
        self.events: list[_Event] = []
        self.summary = HistorySummary()
        self.grants: list[_Grant] = []
        self.with_misuse = misuse
        if latest is None:
            latest = max((item.at for item in self.replayed if item.at), default=None)
        self.shift = (self.end - latest) if latest else timedelta(0)

    def _rand(self, *parts: object) -> Rand:
        return Rand(":".join(["feedgrid-demo", str(self.seed), "history", *map(str, parts)]))

    def _add(self, time: datetime, event_type: EventType, **data: Any) -> None:
        self.events.append(_Event(time, event_type, data))

    @staticmethod
    def _user(item: ReplayedRequest) -> str:
        return f"{item.requester_department} duty officer {item.officer + 1}"

    @staticmethod
    def _client_ip(department: str, officer: int) -> str:
        number = int(uuid.uuid5(HISTORY_NAMESPACE, department).hex[:4], 16) % 200
        return f"10.{100 + number // 4}.{officer // 200}.{officer % 200 + 20}"

    # ------------------------------------------------------------------ requests

    def build(self) -> list[_Event]:
        for item in self.replayed:
            self._request(item)
        self._plays()
        if self.with_misuse:
            self._misuse()
        # Nothing of the record lies in the future: a session still running at its end has no
        # end event yet, as in a real log.
        self.events = sorted(
            (event for event in self.events if event.time <= self.end), key=lambda e: e.time
        )
        self._count_retrievals()
        self.summary.events = len(self.events)
        if self.events:
            self.summary.start = self.events[0].time
            self.summary.end = self.events[-1].time
        return self.events

    def _count_retrievals(self) -> None:
        """What the analytics will count of the record, from the events that are in it."""
        summary = self.summary
        for event in self.events:
            data = event.data
            if event.type == EventType.RETRIEVAL_STARTED:
                summary.retrievals += 1
                pair = pair_key(data["owner_department"], data["requester_department"])
                summary.retrievals_by_pair[pair] += 1
            elif event.type == EventType.RETRIEVAL_ENDED:
                summary.bytes += int(data.get("bytes") or 0)
            elif event.type == EventType.RETRIEVAL_DENIED and data.get("requester_department"):
                summary.attributed_denials += 1
            elif event.type == EventType.RETRIEVAL_DENIED:
                summary.unattributed_denials += 1

    def _request(self, item: ReplayedRequest) -> None:
        assert item.at is not None
        asked = item.at + self.shift
        if asked < self.end - WEEK:
            return
        request_id = _id("request", item.line)
        user = self._user(item)
        common = {
            "requester_department": item.requester_department,
            "requester_user": user,
            "request_id": request_id,
            "purpose": item.purpose,
            "emergency": item.emergency,
            "requested_at": asked,
        }
        self.summary.requests += 1
        by_owner: dict[tuple[str, datetime], list[str]] = {}
        actions: dict[tuple[str, datetime], tuple[str, ...]] = {}
        for feed in item.final["feeds"]:
            owner = feed["owner_department"] or ""
            action = ",".join(sorted(feed["actions"])) or item.action
            base = {**common, "feed_id": feed["feed_id"], "owner_department": owner or None}
            self._add(asked, EventType.ACCESS_REQUESTED, **base, action=action)
            outcome, reason = feed["outcome"], feed["reason"]
            by_policy = feed.get("decided_by") in (None, "policy")
            if by_policy or outcome == "pending":
                decided = asked + timedelta(milliseconds=40)
                first = outcome if by_policy else "pending"
                first_reason = reason if by_policy else "owner_approval_required"
                self._add(
                    decided,
                    EventType.ACCESS_DECIDED,
                    **base,
                    action=action,
                    decision=first,
                    reason=first_reason,
                    decided_at=decided if first != "pending" else None,
                )
            if not by_policy and outcome != "pending":
                self._add(
                    asked + timedelta(milliseconds=40),
                    EventType.ACCESS_DECIDED,
                    **base,
                    action=action,
                    decision="pending",
                    reason="owner_approval_required",
                )
                decided = asked + self._answer_delay(item.line, owner)
                if decided > self.end:
                    self.summary.decisions["pending"] += 1
                    continue
                self._add(
                    decided,
                    EventType.ACCESS_DECIDED,
                    **base,
                    action=action,
                    decision=outcome,
                    reason=reason,
                    decided_at=decided,
                )
            self.summary.decisions[outcome] += 1
            if outcome == "granted":
                key = (owner, decided)
                by_owner.setdefault(key, []).append(feed["feed_id"])
                actions[key] = tuple(sorted(feed["actions"]))
        for (owner, decided), feed_ids in sorted(by_owner.items()):
            grant = _Grant(
                grant_id=_id("grant", item.line, owner, decided.isoformat()),
                feed_ids=tuple(feed_ids),
                owner=owner,
                requester=item.requester_department,
                user=user,
                officer=item.officer,
                actions=actions[(owner, decided)],
                valid_from=decided,
                # None outlives the record: this registry knows none of its grants, so none
                # may be in force now (no alert may name one).
                valid_until=min(decided + timedelta(minutes=item.minutes), self.end),
                line=item.line,
            )
            self.grants.append(grant)
            self.summary.grants += 1
            for feed_id in feed_ids:
                self._add(
                    decided,
                    EventType.GRANT_ISSUED,
                    **common,
                    feed_id=feed_id,
                    owner_department=owner,
                    action=",".join(grant.actions),
                    decision="granted",
                    grant_id=grant.grant_id,
                    decided_at=decided,
                    grant_valid_from=grant.valid_from,
                    grant_valid_until=grant.valid_until,
                )

    def _answer_delay(self, line: int, owner: str) -> timedelta:
        rand = self._rand("answer", line, owner)
        if rand.chance(LATE_ANSWER_SHARE):
            return timedelta(days=5, hours=rand.uniform(0.0, 30.0))
        # Most answers come within hours, some the next day (a product of two draws).
        return timedelta(minutes=3.0 + rand.uniform(0.0, 36 * 60.0) * rand.random())

    # ------------------------------------------------------------------ plays

    def _play(
        self,
        grant: _Grant,
        feed_id: str,
        started: datetime,
        seconds: float,
        megabits: float,
        *,
        client_ip: str,
        token_id: str,
        server: str,
        ended: bool = True,
    ) -> None:
        action = (
            "playback" if "playback" in grant.actions and "live" not in grant.actions else "live"
        )
        base = {
            "feed_id": feed_id,
            "requester_department": grant.requester,
            "requester_user": grant.user,
            "owner_department": grant.owner,
            "grant_id": grant.grant_id,
            "token_id": token_id,
            "action": action,
            "protocol": "rtsp" if server != "nginx-rtmp" else "rtmp",
            "media_server": f"demo-{server}",
            "client_ip": client_ip,
        }
        self._add(
            started, EventType.RETRIEVAL_STARTED, **base, decision="allowed", reason="allowed"
        )
        if ended and server != "mediamtx":  # MediaMTX reports no end of session
            sent = int(seconds * megabits * 125_000) if server == "zlmediakit" else 0
            self._add(
                started + timedelta(seconds=seconds),
                EventType.RETRIEVAL_ENDED,
                **base,
                bytes=sent,
                duration_seconds=seconds if server == "zlmediakit" else 0.0,
            )

    def _plays(self) -> None:
        for number, grant in enumerate(self.grants):
            if not set(grant.actions) & set(PLAYABLE):
                continue
            rand = self._rand("play", grant.grant_id)
            if not rand.chance(PLAYED_GRANT_SHARE):
                continue
            feeds = sorted(grant.feed_ids)
            window = (grant.valid_until - grant.valid_from).total_seconds()
            for feed_id in rand.sample(feeds, min(len(feeds), rand.choice(FEEDS_PLAYED))):
                offset = rand.uniform(5.0, max(6.0, min(window * 0.5, 1800.0)))
                started = grant.valid_from + timedelta(seconds=offset)
                if started >= self.end:
                    continue
                room = (grant.valid_until - started).total_seconds() - 1.0
                seconds = round(max(5.0, min(room, rand.uniform(20.0, 1800.0))), 1)
                server = (
                    "zlmediakit" if rand.chance(0.6) else rand.choice(("mediamtx", "nginx-rtmp"))
                )
                token_id = _id("token", grant.grant_id, feed_id)
                ip = self._client_ip(grant.requester, grant.officer)
                self._play(
                    grant,
                    feed_id,
                    started,
                    seconds,
                    rand.choice(MEGABITS_PER_SECOND),
                    client_ip=ip,
                    token_id=token_id,
                    server=server,
                )
                if rand.chance(REFUSED_PLAY_SHARE):
                    self._refused(grant, feed_id, started - timedelta(seconds=30), number)

    def _refused(self, grant: _Grant, feed_id: str, moment: datetime, number: int) -> None:
        """A bookmarked URL without its token (no requester can be named), or a token tried
        on another of the owner's cameras (the token's department is known)."""
        base = {
            "feed_id": feed_id,
            "owner_department": grant.owner,
            "action": "live",
            "protocol": "rtsp",
            "decision": "denied",
        }
        if number % 2 == 0:
            self._add(
                moment,
                EventType.RETRIEVAL_DENIED,
                **base,
                media_server="demo-zlmediakit",
                client_ip=self._client_ip("unknown", number % 150),
                reason="missing_token",
            )
        else:
            self._add(
                moment,
                EventType.RETRIEVAL_DENIED,
                **base,
                media_server="demo-mediamtx",
                requester_department=grant.requester,
                requester_user=grant.user,
                grant_id=grant.grant_id,
                token_id=_id("token", grant.grant_id, "elsewhere"),
                client_ip=self._client_ip(grant.requester, grant.officer),
                reason="token_for_another_feed",
            )

    # ------------------------------------------------------------------ misuse

    def _spread(self, count: int, rule: str) -> list[_Grant]:
        """``count`` played-looking grants for a kind of misuse: some in the last day, the
        rest spread over the week (deterministic)."""
        playable = [
            grant
            for grant in self.grants
            if set(grant.actions) & set(PLAYABLE)
            and grant.requester != grant.owner
            and grant.valid_until < self.end - timedelta(minutes=30)
        ]
        if not playable:
            return []
        recent = [grant for grant in playable if grant.valid_from > self.end - timedelta(days=1)]
        older = [grant for grant in playable if grant not in recent]
        rand = self._rand("misuse", rule)
        chosen = rand.sample(recent, min(len(recent), MISUSE_IN_LAST_DAY))
        rest = older or playable
        chosen += rand.sample(rest, min(len(rest), max(0, count - len(chosen))))
        return chosen

    def _misuse(self) -> None:
        for number, grant in enumerate(self._spread(SHARED_TOKENS, "shared")):
            feed_id = grant.feed_ids[0]
            token_id = _id("shared-token", grant.grant_id)
            started = grant.valid_from + timedelta(seconds=40)
            seconds = max(10.0, min(600.0, (grant.valid_until - started).total_seconds() - 5))
            for machine in (grant.officer, grant.officer + 100 + number):
                self._play(
                    grant,
                    feed_id,
                    started + timedelta(seconds=20 * (machine != grant.officer)),
                    seconds,
                    2.0,
                    client_ip=self._client_ip(grant.requester, machine),
                    token_id=token_id,
                    server="zlmediakit",
                )
            self.summary.misuse["token_multiple_ips"] += 1
        for grant in self._spread(OUTSIDE_WINDOW_PLAYS, "late"):
            # A JWT checked by the media server itself, played from a saved URL after the
            # grant's window closed: the agents see the grant's end.
            self._play(
                grant,
                grant.feed_ids[0],
                grant.valid_until + timedelta(minutes=20),
                120.0,
                2.0,
                client_ip=self._client_ip(grant.requester, grant.officer),
                token_id=_id("late-token", grant.grant_id),
                server="mediamtx",
            )
            self.summary.misuse["retrieval_outside_grant"] += 1
        self._harvests()

    def _harvests(self, limit: int | None = None) -> None:
        """A requester with a grant on many feeds of an area opens them all within a minute:
        more than the harvesting limit (50 by default). The grant is real in the recorded
        week (issued by the owner), the pace is what the rule catches."""
        feeds_by_owner: dict[str, set[str]] = {}
        for grant in self.grants:
            feeds_by_owner.setdefault(grant.owner, set()).update(grant.feed_ids)
        owners = sorted(feeds_by_owner, key=lambda owner: -len(feeds_by_owner[owner]))
        wanted = limit or 60
        seen = 0
        for template in self._spread(HARVESTS, "harvest"):
            pool = sorted(feeds_by_owner.get(template.owner, ()))
            if len(pool) < wanted:
                pool = sorted(feeds_by_owner[owners[0]]) if owners else pool
                owner = owners[0] if owners else template.owner
            else:
                owner = template.owner
            if len(pool) <= 50 or owner == template.requester:
                continue
            feed_ids = tuple(pool[:wanted])
            issued = template.valid_from + timedelta(minutes=2)
            grant = _Grant(
                grant_id=_id("harvest-grant", template.grant_id),
                feed_ids=feed_ids,
                owner=owner,
                requester=template.requester,
                user=template.user,
                officer=template.officer,
                actions=("live",),
                valid_from=issued,
                valid_until=min(issued + timedelta(hours=1), self.end),
                line=template.line,
            )
            for feed_id in feed_ids:
                self._add(
                    issued,
                    EventType.GRANT_ISSUED,
                    feed_id=feed_id,
                    owner_department=owner,
                    requester_department=grant.requester,
                    requester_user=grant.user,
                    request_id=_id("harvest-request", template.grant_id),
                    purpose="city management",
                    action="live",
                    decision="granted",
                    grant_id=grant.grant_id,
                    decided_at=issued,
                    grant_valid_from=grant.valid_from,
                    grant_valid_until=grant.valid_until,
                )
            self.summary.grants += 1
            for position, feed_id in enumerate(feed_ids):
                self._play(
                    grant,
                    feed_id,
                    issued + timedelta(seconds=5 + position * 0.6),
                    30.0,
                    1.0,
                    client_ip=self._client_ip(grant.requester, grant.officer),
                    token_id=_id("harvest-token", grant.grant_id, feed_id),
                    server="zlmediakit",
                )
            seen += 1
        if seen:
            self.summary.misuse["bulk_harvesting"] += seen


def encode(event: _Event) -> tuple[bytes, bytes]:
    data = {name: value for name, value in event.data.items() if value is not None}
    key = str(data["feed_id"]).encode()
    value = encode_cloud_event(
        id=uuid.uuid5(
            HISTORY_NAMESPACE, f"{event.type}:{event.time.isoformat()}:{sorted(data.items())}"
        ),
        type=event.type,
        time=event.time,
        subject=str(data["feed_id"]),
        dataschema=SCHEMA_ACCESS_EVENT_V1,
        data=data,
        source=HISTORY_SOURCE,
    )
    return key, value


async def send_recorded_week(
    settings: Settings,
    replayed: list[ReplayedRequest],
    *,
    seed: int,
    now: datetime | None = None,
    latest: datetime | None = None,
    misuse: bool = True,
) -> HistorySummary:
    """Builds the recorded week (or one wave's part of it, see :class:`RecordedWeek`) from
    the replay's answers and produces it to access-events."""
    week = RecordedWeek(replayed, now or datetime.now(UTC), seed, latest=latest, misuse=misuse)
    events = week.build()
    topic = topic_name(settings.topic_prefix, ACCESS_EVENTS)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        enable_idempotence=True,
    )
    await producer.start()
    try:
        deliveries = []
        for event in events:
            key, value = encode(event)
            timestamp = int(event.time.timestamp() * 1000)
            deliveries.append(
                await producer.send(topic, value=value, key=key, timestamp_ms=timestamp)
            )
        await producer.flush()
        for delivery in deliveries:
            await delivery
    finally:
        await producer.stop()
    return week.summary
