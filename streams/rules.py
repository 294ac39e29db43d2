"""Alert rules: pure functions and small windows over event time, no I/O.

Rules and where they run (all keyed so one worker sees everything a rule needs):

``retrieval_without_grant``      access-events agent (by feed): a retrieval started with no grant,
                                 an unknown or revoked grant, or another department's grant.
``retrieval_outside_grant``      access-events agent: a valid grant, but the retrieval falls
                                 outside its time window or uses an action it does not allow.
``bulk_harvesting``              requester-activity agent (by requester): one requester opened
                                 more than N distinct feeds within a minute.
``token_multiple_ips``           requester-activity agent: one retrieval token used from two or
                                 more client IPs within the window.
``feed_offline_while_granted``   heartbeat agent (by feed): a feed went offline while a grant
                                 on it is in force.

Windows use event time, so a replay judges events the same way the first pass did, and an
alert's id comes from its rule and its trigger, so a replayed alert collapses in ClickHouse.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.events import ALERT_EVENT_TYPE, SCHEMA_ALERT_V1, AccessEventData, AlertData, CloudEvent

ALERT_NAMESPACE = uuid.UUID("6f1d8a52-2f0e-4d8e-9a59-8d1f3c0e7a11")
ALERT_SOURCE = "/feedgrid/streams"

RETRIEVAL_WITHOUT_GRANT = "retrieval_without_grant"
RETRIEVAL_OUTSIDE_GRANT = "retrieval_outside_grant"
BULK_HARVESTING = "bulk_harvesting"
TOKEN_MULTIPLE_IPS = "token_multiple_ips"
FEED_OFFLINE_WHILE_GRANTED = "feed_offline_while_granted"
ALERT_RULES = (
    RETRIEVAL_WITHOUT_GRANT,
    RETRIEVAL_OUTSIDE_GRANT,
    BULK_HARVESTING,
    TOKEN_MULTIPLE_IPS,
    FEED_OFFLINE_WHILE_GRANTED,
)

HARVEST_WINDOW_SECONDS = 60.0

# A media server reports what the client does ("read" for MediaMTX); a grant names what the
# department may do. A reported action is covered by any of these granted actions.
_COVERED_BY = {"read": {"read", "live", "playback", "snapshot", "download"}}


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def split_actions(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(part.strip() for part in value.replace(" ", ",").split(",") if part.strip())


@dataclass(frozen=True)
class RaisedAlert:
    alert_id: uuid.UUID
    time: datetime
    data: AlertData
    owner_department: str
    token_id: str
    trigger_event_id: uuid.UUID | None

    @property
    def key(self) -> str:
        return self.data.requester_user or self.data.requester_department or self.data.feed_id or ""

    def to_cloud_event(self) -> CloudEvent:
        return CloudEvent(
            id=self.alert_id,
            source=ALERT_SOURCE,
            type=ALERT_EVENT_TYPE,
            time=self.time,
            subject=self.key or None,
            dataschema=SCHEMA_ALERT_V1,
            data=self.data.model_dump(mode="json"),
        )

    def to_row(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "time": self.time,
            "rule": self.data.rule,
            "severity": self.data.severity,
            "feed_id": self.data.feed_id or "",
            "owner_department": self.owner_department,
            "requester_department": self.data.requester_department or "",
            "requester_user": self.data.requester_user or "",
            "grant_id": self.data.grant_id or "",
            "token_id": self.token_id,
            "message": self.data.message,
            "evidence": orjson.dumps(self.data.evidence, default=str).decode(),
            "trigger_event_id": self.trigger_event_id or uuid.UUID(int=0),
        }


def raise_alert(
    rule: str,
    discriminator: str,
    *,
    time: datetime,
    message: str,
    severity: str = "warning",
    feed_id: str | None = None,
    owner_department: str = "",
    requester_department: str | None = None,
    requester_user: str | None = None,
    grant_id: str | None = None,
    token_id: str | None = None,
    trigger_event_id: uuid.UUID | None = None,
    evidence: dict[str, Any] | None = None,
) -> RaisedAlert:
    data = AlertData(
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        feed_id=feed_id,
        requester_department=requester_department,
        requester_user=requester_user,
        grant_id=grant_id,
        message=message,
        evidence=evidence or {},
    )
    return RaisedAlert(
        alert_id=uuid.uuid5(ALERT_NAMESPACE, f"{rule}:{discriminator}"),
        time=time,
        data=data,
        owner_department=owner_department,
        token_id=token_id or "",
        trigger_event_id=trigger_event_id,
    )


# ------------------------------------------------------------------------------------ grants


@dataclass(frozen=True)
class GrantState:
    """A grant as the agents know it from grant.issued / grant.revoked events."""

    grant_id: str
    feed_id: str
    requester_department: str
    actions: frozenset[str]
    valid_from: float | None
    valid_until: float | None
    revoked_at: float | None = None

    def in_force_at(self, moment: float) -> bool:
        if self.revoked_at is not None and moment >= self.revoked_at:
            return False
        if self.valid_from is not None and moment < self.valid_from:
            return False
        return self.valid_until is None or moment <= self.valid_until

    def to_json(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "feed_id": self.feed_id,
            "requester_department": self.requester_department,
            "actions": sorted(self.actions),
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> GrantState:
        return cls(
            grant_id=value["grant_id"],
            feed_id=value["feed_id"],
            requester_department=value.get("requester_department") or "",
            actions=frozenset(value.get("actions") or ()),
            valid_from=value.get("valid_from"),
            valid_until=value.get("valid_until"),
            revoked_at=value.get("revoked_at"),
        )


def grant_from_issued(data: AccessEventData, time: datetime) -> GrantState:
    return GrantState(
        grant_id=data.grant_id or "",
        feed_id=data.feed_id,
        requester_department=data.requester_department or "",
        actions=split_actions(data.action),
        valid_from=_epoch(data.grant_valid_from) or time.timestamp(),
        valid_until=_epoch(data.grant_valid_until),
    )


def apply_grant_event(
    grants: dict[str, dict[str, Any]], event_type: str, data: AccessEventData, time: datetime
) -> bool:
    """Updates a feed's grants (grant_id -> JSON state) from a grant event; True if changed."""
    if not data.grant_id:
        return False
    if event_type == "feedgrid.grant.issued":
        current = grants.get(data.grant_id)
        issued = grant_from_issued(data, time)
        if current is not None and current.get("revoked_at") is not None:
            issued = GrantState(**{**issued.__dict__, "revoked_at": current["revoked_at"]})
        grants[data.grant_id] = issued.to_json()
        return True
    if event_type == "feedgrid.grant.revoked":
        current = (
            grants.get(data.grant_id)
            or GrantState(
                grant_id=data.grant_id,
                feed_id=data.feed_id,
                requester_department=data.requester_department or "",
                actions=frozenset(),
                valid_from=None,
                valid_until=None,
            ).to_json()
        )
        grants[data.grant_id] = {**current, "revoked_at": time.timestamp()}
        return True
    return False


def prune_grants(grants: dict[str, dict[str, Any]], now: float, keep_seconds: float) -> bool:
    """Forgets grants that ended (expired or revoked) more than ``keep_seconds`` ago."""
    stale = []
    for grant_id, value in grants.items():
        ended = value.get("revoked_at") or value.get("valid_until")
        if ended is not None and ended < now - keep_seconds:
            stale.append(grant_id)
    for grant_id in stale:
        del grants[grant_id]
    return bool(stale)


def grants_in_force(grants: dict[str, dict[str, Any]], moment: float) -> list[GrantState]:
    states = (GrantState.from_json(value) for value in grants.values())
    return [state for state in states if state.in_force_at(moment)]


def _action_allowed(action: str | None, granted: frozenset[str]) -> bool:
    if not action or not granted:
        return True
    return action in granted or bool(_COVERED_BY.get(action, set()) & granted)


def parse_grants(grants: dict[str, dict[str, Any]] | None) -> dict[str, GrantState]:
    return {grant_id: GrantState.from_json(value) for grant_id, value in (grants or {}).items()}


def check_retrieval(
    event_id: uuid.UUID,
    time: datetime,
    data: AccessEventData,
    owner_department: str,
    grants: dict[str, GrantState],
) -> RaisedAlert | None:
    """Judges one retrieval.started against the grants known for its feed."""
    requester = data.requester_department or ""
    if requester and requester == owner_department:
        return None  # a department retrieving its own feeds needs no grant
    grant = grants.get(data.grant_id or "")
    problem: str | None = None
    if not data.grant_id:
        problem = "the retrieval names no grant"
    elif grant is None:
        problem = f"grant {data.grant_id} is not known for this feed"
    else:
        if grant.revoked_at is not None and time.timestamp() >= grant.revoked_at:
            problem = f"grant {grant.grant_id} was revoked"
        elif grant.requester_department and requester and grant.requester_department != requester:
            problem = f"grant {grant.grant_id} belongs to department {grant.requester_department}"
        else:
            return _check_window_and_action(event_id, time, data, grant, owner_department)
    return raise_alert(
        RETRIEVAL_WITHOUT_GRANT,
        str(event_id),
        severity="critical",
        message=f"retrieval of feed {data.feed_id} without a valid grant: {problem}",
        evidence={"problem": problem, "client_ip": data.client_ip, "action": data.action},
        **_alert_context(event_id, time, data, owner_department),
    )


def _alert_context(
    event_id: uuid.UUID, time: datetime, data: AccessEventData, owner_department: str
) -> dict[str, Any]:
    """What every retrieval alert says of its trigger (built only when one is raised)."""
    return {
        "time": time,
        "feed_id": data.feed_id,
        "owner_department": owner_department,
        "requester_department": data.requester_department,
        "requester_user": data.requester_user,
        "grant_id": data.grant_id,
        "token_id": data.token_id,
        "trigger_event_id": event_id,
    }


def _check_window_and_action(
    event_id: uuid.UUID,
    time: datetime,
    data: AccessEventData,
    grant: GrantState,
    owner_department: str,
) -> RaisedAlert | None:
    moment = time.timestamp()
    problems = []
    if grant.valid_from is not None and moment < grant.valid_from:
        problems.append("before the grant's window opens")
    if grant.valid_until is not None and moment > grant.valid_until:
        problems.append("after the grant's window closed")
    if not _action_allowed(data.action, grant.actions):
        problems.append(
            f"action {data.action!r} is not granted ({', '.join(sorted(grant.actions))})"
        )
    if not problems:
        return None
    return raise_alert(
        RETRIEVAL_OUTSIDE_GRANT,
        str(event_id),
        message=f"retrieval of feed {data.feed_id} outside its grant: " + "; ".join(problems),
        evidence={
            "problems": problems,
            "valid_from": _iso(grant.valid_from),
            "valid_until": _iso(grant.valid_until),
            "granted_actions": sorted(grant.actions),
            "action": data.action,
        },
        **_alert_context(event_id, time, data, owner_department),
    )


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


# ------------------------------------------------------------------- per-requester windows


@dataclass(frozen=True)
class FeedOpened:
    """What the requester-activity agent receives for each retrieval.started."""

    event_id: uuid.UUID
    time: datetime
    feed_id: str
    owner_department: str
    requester_department: str
    requester_user: str
    token_id: str
    grant_id: str
    client_ip: str

    @property
    def requester(self) -> str:
        return f"{self.requester_department}/{self.requester_user}"

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FeedOpened:
        return cls(
            **{
                **value,
                "event_id": uuid.UUID(value["event_id"]),
                "time": datetime.fromisoformat(value["time"]),
            }
        )


def encode_opened(records: Iterable[FeedOpened]) -> bytes:
    """One requester-activity message: a requester's retrievals from one batch, in order.

    Batching them (instead of one message per retrieval) keeps the repartitioning cheap; the
    order per requester holds because one requester's messages share a partition.
    """
    return orjson.dumps([record.__dict__ for record in records])


def decode_opened(raw: bytes) -> list[FeedOpened]:
    value = orjson.loads(raw)
    if not isinstance(value, list):
        raise ValueError("a requester-activity message is a JSON list")
    return [FeedOpened.from_json(item) for item in value]


@dataclass
class RequesterWindows:
    """Sliding event-time windows per requester (feeds opened) and per token (client IPs)."""

    harvest_threshold: int
    token_window_seconds: float
    harvest_window_seconds: float = HARVEST_WINDOW_SECONDS
    feeds_by_requester: dict[str, dict[str, float]] = field(default_factory=dict)
    harvest_alerted_until: dict[str, float] = field(default_factory=dict)
    ips_by_token: dict[str, dict[str, float]] = field(default_factory=dict)
    _seen: int = 0

    def observe(self, opened: FeedOpened) -> list[RaisedAlert]:
        alerts = []
        harvest = self._observe_feed(opened)
        if harvest is not None:
            alerts.append(harvest)
        shared = self._observe_token(opened)
        if shared is not None:
            alerts.append(shared)
        self._seen += 1
        if self._seen % 50_000 == 0:
            self.forget_before(opened.time.timestamp())
        return alerts

    def _observe_feed(self, opened: FeedOpened) -> RaisedAlert | None:
        moment = opened.time.timestamp()
        feeds = self.feeds_by_requester.setdefault(opened.requester, {})
        horizon = moment - self.harvest_window_seconds
        for feed_id in [feed for feed, seen in feeds.items() if seen <= horizon]:
            del feeds[feed_id]
        feeds[opened.feed_id] = max(moment, feeds.get(opened.feed_id, moment))
        if len(feeds) <= self.harvest_threshold:
            return None
        if self.harvest_alerted_until.get(opened.requester, 0.0) > moment:
            return None
        self.harvest_alerted_until[opened.requester] = moment + self.harvest_window_seconds
        return raise_alert(
            BULK_HARVESTING,
            str(opened.event_id),
            time=opened.time,
            message=(
                f"{opened.requester} opened {len(feeds)} feeds within "
                f"{self.harvest_window_seconds:.0f} s (limit {self.harvest_threshold})"
            ),
            feed_id=opened.feed_id,
            owner_department=opened.owner_department,
            requester_department=opened.requester_department,
            requester_user=opened.requester_user or None,
            token_id=opened.token_id,
            trigger_event_id=opened.event_id,
            evidence={"feeds": len(feeds), "limit": self.harvest_threshold},
        )

    def _observe_token(self, opened: FeedOpened) -> RaisedAlert | None:
        if not opened.token_id or not opened.client_ip:
            return None
        moment = opened.time.timestamp()
        addresses = self.ips_by_token.setdefault(opened.token_id, {})
        horizon = moment - self.token_window_seconds
        for address in [ip for ip, seen in addresses.items() if seen <= horizon]:
            del addresses[address]
        is_new = opened.client_ip not in addresses
        addresses[opened.client_ip] = moment
        if not is_new or len(addresses) < 2:
            return None
        return raise_alert(
            TOKEN_MULTIPLE_IPS,
            f"{opened.token_id}:{opened.client_ip}",
            time=opened.time,
            severity="critical",
            message=(
                f"retrieval token {opened.token_id} used from {len(addresses)} addresses within "
                f"{self.token_window_seconds:.0f} s"
            ),
            feed_id=opened.feed_id,
            owner_department=opened.owner_department,
            requester_department=opened.requester_department,
            requester_user=opened.requester_user or None,
            grant_id=opened.grant_id or None,
            token_id=opened.token_id,
            trigger_event_id=opened.event_id,
            evidence={"addresses": sorted(addresses)},
        )

    def forget_before(self, moment: float) -> None:
        """Drops windows that cannot matter any more (bounded memory)."""
        harvest_horizon = moment - self.harvest_window_seconds
        token_horizon = moment - self.token_window_seconds
        _drop_stale(self.feeds_by_requester, harvest_horizon)
        _drop_stale(self.ips_by_token, token_horizon)
        for requester in [r for r, until in self.harvest_alerted_until.items() if until < moment]:
            del self.harvest_alerted_until[requester]


def _drop_stale(windows: dict[str, dict[str, float]], horizon: float) -> None:
    for key in list(windows):
        entries = windows[key]
        for item in [name for name, seen in entries.items() if seen <= horizon]:
            del entries[item]
        if not entries:
            del windows[key]


def offline_alerts(
    feed_id: str,
    owner_department: str,
    changed_at: datetime,
    grants: Iterable[GrantState],
) -> list[RaisedAlert]:
    """One alert per grant in force when a feed goes offline."""
    return [
        raise_alert(
            FEED_OFFLINE_WHILE_GRANTED,
            f"{feed_id}:{grant.grant_id}:{changed_at.timestamp():.3f}",
            time=changed_at,
            message=(
                f"feed {feed_id} went offline while granted to "
                f"{grant.requester_department or 'a department'}"
            ),
            feed_id=feed_id,
            owner_department=owner_department,
            requester_department=grant.requester_department or None,
            grant_id=grant.grant_id,
            evidence={"valid_until": _iso(grant.valid_until)},
        )
        for grant in grants
    ]
