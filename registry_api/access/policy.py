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
    """Decides one feed for one request. Every branch names its reason.

    :func:`registry_api.access.policy_columns.decide_columns` decides many feeds at once over
    columns; it answers exactly as this function does for each of them (a unit test compares
    the two over every combination) and builds its messages with the helpers below.
    """
    check_emergency_allowed(request)
    if not feed.active:
        return _denied(ReasonCode.feed_not_active, inactive_message(feed.feed_id))
    unsupported = request.actions - supported_actions(feed.feed_kind)
    if unsupported:
        return _denied(
            ReasonCode.action_not_supported, unsupported_message(feed.feed_kind, unsupported)
        )
    if feed.owner_department == request.requester_department:
        return granted_decision(ReasonCode.own_department, OWN_DEPARTMENT_MESSAGE, request)
    if feed.sharing_class is SharingClass.not_shared:
        return _denied(ReasonCode.not_shared_legal_basis, not_shared_message(feed.legal_basis))
    if feed.sharing_class is SharingClass.unconditional:
        return granted_decision(ReasonCode.unconditional_sharing, UNCONDITIONAL_MESSAGE, request)
    unmet = first_unmet_condition(feed.conditions, request)
    if unmet is None:
        return granted_decision(ReasonCode.conditions_met, CONDITIONS_MET_MESSAGE, request)
    if emergency_applies(request):
        # Only where the rules would make it wait: an emergency never gets less than the rules give.
        return emergency_grant(request, context)
    reason, message = unmet
    return pending_decision(
        reason,
        pending_message(message, feed.owner_department),
        request,
        add_working_days(context.now, context.owner_deadline_days, context.timezone),
    )


def first_unmet_condition(
    conditions: SharingConditions, request: RequestFacts
) -> tuple[ReasonCode, str] | None:
    """The first written condition the request does not fit, in a fixed order."""
    if (
        conditions.departments is not None
        and request.requester_department not in conditions.departments
    ):
        return ReasonCode.department_not_in_conditions, department_unmet_message(request)
    if conditions.purposes is not None and request.purpose not in conditions.purposes:
        return ReasonCode.purpose_not_in_conditions, purpose_unmet_message(request)
    if conditions.actions is not None:
        outside = actions_outside(request, conditions.actions)
        if outside:
            return ReasonCode.action_not_in_conditions, actions_unmet_message(outside)
    limit = conditions.max_duration_minutes
    if limit is not None and request.duration_minutes > limit:
        return ReasonCode.duration_exceeds_conditions, duration_unmet_message(request, limit)
    if conditions.area is not None and (
        request.area is None or not conditions.area.covers(request.area)
    ):
        return ReasonCode.area_outside_conditions, area_unmet_message(request)
    return None


def emergency_applies(request: RequestFacts) -> bool:
    """An emergency request for live view is granted briefly where the rules would make it wait."""
    return request.emergency and AccessAction.live in request.actions


def actions_outside(request: RequestFacts, allowed: frozenset[str]) -> set[str]:
    return {action.value for action in request.actions} - set(allowed)


# ------------------------------------------------------------------------------ messages
# Shared by decide() and the column path, so both say exactly the same.

OWN_DEPARTMENT_MESSAGE = "the feed belongs to the requesting department"
UNCONDITIONAL_MESSAGE = "unconditional sharing"
CONDITIONS_MET_MESSAGE = "the request fits the feed's conditions"


def missing_message(feed_id: str) -> str:
    return f"no feed {feed_id!r}"


def inactive_message(feed_id: str) -> str:
    return f"feed {feed_id} is not active"


def unsupported_message(feed_kind: str, unsupported: Iterable[str]) -> str:
    return f"a {feed_kind} does not support: {', '.join(sorted(unsupported))}"


def not_shared_message(legal_basis: str | None) -> str:
    return f"not shared: {legal_basis or 'no legal basis recorded'}"


def pending_message(unmet_message: str, owner_department: str) -> str:
    return f"{unmet_message}; the owner {owner_department} decides"


def department_unmet_message(request: RequestFacts) -> str:
    return f"department {request.requester_department} is not among the conditions' departments"


def purpose_unmet_message(request: RequestFacts) -> str:
    return f"purpose {request.purpose!r} is not allowed"


def actions_unmet_message(outside: Iterable[str]) -> str:
    return "actions outside the conditions: " + ", ".join(sorted(outside))


def duration_unmet_message(request: RequestFacts, limit: int) -> str:
    return f"{request.duration_minutes:.0f} minutes asked, at most {limit} allowed"


def area_unmet_message(request: RequestFacts) -> str:
    if request.area is None:
        return "no area of interest given"
    return "the area of interest is outside the allowed area"


# ------------------------------------------------------------------------------ decisions


def granted_decision(reason: ReasonCode, message: str, request: RequestFacts) -> PolicyDecision:
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


def pending_decision(
    reason: ReasonCode, message: str, request: RequestFacts, due_at: datetime
) -> PolicyDecision:
    return PolicyDecision(
        outcome=Outcome.pending,
        reason=reason,
        message=message,
        actions=request.actions,
        valid_from=request.valid_from,
        valid_until=request.valid_until,
        due_at=due_at,
    )


def emergency_grant(request: RequestFacts, context: PolicyContext) -> PolicyDecision:
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
