"""The sharing policy as pure functions: a feed's sharing rules and a request in, a decision out.

Nothing here touches the database or the clock; the caller passes ``now``. That keeps the whole
decision table testable in microseconds and lets one request decide hundreds of feeds quickly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from shapely.geometry.base import BaseGeometry

from schemas.access import CAMERA_ACTIONS, SENSOR_ACTIONS, AccessAction, Outcome, ReasonCode


class SharingClass(StrEnum):
    unconditional = "unconditional"
    conditional = "conditional"
    not_shared = "not_shared"


PUBLIC_SECURITY_KIND = "public_security"


@dataclass(frozen=True)
class SharingConditions:
    """What the owner wrote on a conditional feed. ``None`` means no limit on that dimension."""

    departments: frozenset[str] | None = None
    purposes: frozenset[str] | None = None
    actions: frozenset[str] | None = None
    max_duration_minutes: int | None = None
    area: BaseGeometry | None = None


@dataclass(frozen=True)
class FeedSharing:
    """The policy's view of one feed."""

    feed_id: str
    owner_department: str
    feed_kind: str  # "camera" | "sensor"
    sharing_class: SharingClass
    conditions: SharingConditions = field(default_factory=SharingConditions)
    legal_basis: str | None = None
    active: bool = True


@dataclass(frozen=True)
class RequestFacts:
    """The policy's view of one access request."""

    requester_department: str
    requester_department_kind: str
    purpose: str
    actions: frozenset[AccessAction]
    valid_from: datetime
    valid_until: datetime
    emergency: bool = False
    emergency_reason: str | None = None
    area: BaseGeometry | None = None

    @property
    def duration_minutes(self) -> float:
        return (self.valid_until - self.valid_from).total_seconds() / 60.0


@dataclass(frozen=True)
class PolicyDecision:
    outcome: Outcome
    reason: ReasonCode
    message: str
    actions: frozenset[AccessAction] = frozenset()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    due_at: datetime | None = None
    emergency: bool = False
    review_required: bool = False


@dataclass(frozen=True)
class PolicyContext:
    """Settings the decision depends on, passed in so the functions stay pure."""

    now: datetime
    owner_deadline_days: int
    emergency_grant_minutes: int
    timezone: ZoneInfo


class EmergencyNotAllowed(ValueError):
    """Only a public-security department may flag a request as an emergency."""


def check_emergency_allowed(request: RequestFacts) -> None:
    if request.emergency and request.requester_department_kind != PUBLIC_SECURITY_KIND:
        raise EmergencyNotAllowed("only public-security departments may make emergency requests")
    if request.emergency and not (request.emergency_reason or "").strip():
        raise EmergencyNotAllowed("an emergency request needs a reason")


def supported_actions(feed_kind: str) -> frozenset[AccessAction]:
    return SENSOR_ACTIONS if feed_kind == "sensor" else CAMERA_ACTIONS


def decide(feed: FeedSharing, request: RequestFacts, context: PolicyContext) -> PolicyDecision:
    """Decides one feed for one request. Every branch names its reason."""
    check_emergency_allowed(request)
    if not feed.active:
        return _denied(ReasonCode.feed_not_active, f"feed {feed.feed_id} is not active")
    unsupported = request.actions - supported_actions(feed.feed_kind)
    if unsupported:
        names = ", ".join(sorted(unsupported))
        return _denied(
            ReasonCode.action_not_supported, f"a {feed.feed_kind} does not support: {names}"
        )
    if feed.owner_department == request.requester_department:
        return _granted(
            ReasonCode.own_department, "the feed belongs to the requesting department", request
        )
    if feed.sharing_class is SharingClass.not_shared:
        basis = feed.legal_basis or "no legal basis recorded"
        return _denied(ReasonCode.not_shared_legal_basis, f"not shared: {basis}")
    if feed.sharing_class is SharingClass.unconditional:
        return _granted(ReasonCode.unconditional_sharing, "unconditional sharing", request)
    unmet = first_unmet_condition(feed.conditions, request)
    if unmet is None:
        return _granted(
            ReasonCode.conditions_met, "the request fits the feed's conditions", request
        )
    if request.emergency and AccessAction.live in request.actions:
        # Only where the rules would make it wait: an emergency never gets less than the rules give.
        return _emergency_grant(request, context)
    reason, message = unmet
    return PolicyDecision(
        outcome=Outcome.pending,
        reason=reason,
        message=f"{message}; the owner {feed.owner_department} decides",
        actions=request.actions,
        valid_from=request.valid_from,
        valid_until=request.valid_until,
        due_at=add_working_days(context.now, context.owner_deadline_days, context.timezone),
    )


def first_unmet_condition(
    conditions: SharingConditions, request: RequestFacts
) -> tuple[ReasonCode, str] | None:
    """The first written condition the request does not fit, in a fixed order."""
    if (
        conditions.departments is not None
        and request.requester_department not in conditions.departments
    ):
        return ReasonCode.department_not_in_conditions, (
            f"department {request.requester_department} is not among the conditions' departments"
        )
    if conditions.purposes is not None and request.purpose not in conditions.purposes:
        return ReasonCode.purpose_not_in_conditions, f"purpose {request.purpose!r} is not allowed"
    if conditions.actions is not None:
        outside = {action.value for action in request.actions} - set(conditions.actions)
        if outside:
            return ReasonCode.action_not_in_conditions, (
                "actions outside the conditions: " + ", ".join(sorted(outside))
            )
    limit = conditions.max_duration_minutes
    if limit is not None and request.duration_minutes > limit:
        return ReasonCode.duration_exceeds_conditions, (
            f"{request.duration_minutes:.0f} minutes asked, at most {limit} allowed"
        )
    if conditions.area is not None and (
        request.area is None or not conditions.area.covers(request.area)
    ):
        return ReasonCode.area_outside_conditions, (
            "no area of interest given"
            if request.area is None
            else "the area of interest is outside the allowed area"
        )
    return None


def _granted(reason: ReasonCode, message: str, request: RequestFacts) -> PolicyDecision:
    return PolicyDecision(
        outcome=Outcome.granted,
        reason=reason,
        message=message,
        actions=request.actions,
        valid_from=request.valid_from,
        valid_until=request.valid_until,
    )


def _denied(reason: ReasonCode, message: str) -> PolicyDecision:
    return PolicyDecision(outcome=Outcome.denied, reason=reason, message=message)


def _emergency_grant(request: RequestFacts, context: PolicyContext) -> PolicyDecision:
    """Live view only, for a short bounded time, and the owner reviews it afterwards."""
    start = max(request.valid_from, context.now)
    end = min(request.valid_until, start + timedelta(minutes=context.emergency_grant_minutes))
    if end <= start:
        end = start + timedelta(minutes=context.emergency_grant_minutes)
    return PolicyDecision(
        outcome=Outcome.granted,
        reason=ReasonCode.emergency_live_access,
        message=(
            f"emergency: live view for at most {context.emergency_grant_minutes} minutes, "
            "pending the owner's review"
        ),
        actions=frozenset({AccessAction.live}),
        valid_from=start,
        valid_until=end,
        emergency=True,
        review_required=True,
    )


def add_working_days(start: datetime, days: int, timezone: ZoneInfo) -> datetime:
    """``start`` plus ``days`` working days (Monday to Friday) counted in the city's time zone.

    A request made on a weekend starts counting on Monday; the due time keeps the clock time.
    """
    local = start.astimezone(timezone)
    counted = 0
    while counted < days:
        local = local + timedelta(days=1)
        if local.weekday() < 5:
            counted += 1
    return local.astimezone(start.tzinfo)


def decide_many(
    feeds: Iterable[FeedSharing], request: RequestFacts, context: PolicyContext
) -> list[tuple[FeedSharing, PolicyDecision]]:
    return [(feed, decide(feed, request, context)) for feed in feeds]
