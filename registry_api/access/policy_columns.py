"""The sharing policy over columns: every feed of a request decided at once.

The same decision table as :func:`registry_api.access.policy.decide`, step for step, but each
step is one comparison over the columns of all feeds still undecided: missing, retired,
unsupported action, own department, not shared, unconditional, then the written conditions of
the conditional feeds left (departments, purposes, actions, duration, area, in that order),
then an emergency or the owner. A feed's reason is the first step that holds for it; its
message is written by the same helpers ``decide`` uses. Decisions of a kind share one
:class:`PolicyDecision` (``templates``); only the message is per feed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import shapely

from registry_api.access.feed_columns import FeedColumns
from registry_api.access.policy import (
    CONDITIONS_MET_MESSAGE,
    OWN_DEPARTMENT_MESSAGE,
    UNCONDITIONAL_MESSAGE,
    PolicyContext,
    PolicyDecision,
    RequestFacts,
    SharingConditions,
    actions_outside,
    actions_unmet_message,
    add_working_days,
    area_unmet_message,
    check_emergency_allowed,
    department_unmet_message,
    duration_unmet_message,
    emergency_applies,
    emergency_grant,
    granted_decision,
    inactive_message,
    missing_message,
    not_shared_message,
    pending_decision,
    pending_message,
    purpose_unmet_message,
    supported_actions,
    unsupported_message,
)
from registry_api.feeds.index.records import KINDS, SHARING_CODE
from schemas.access import Outcome, ReasonCode

REASONS = tuple(ReasonCode)
CODE = {reason: code for code, reason in enumerate(REASONS)}
UNDECIDED = -1
# The written conditions in the order they are checked, with the reason each one gives.
CONDITION_REASONS = (
    ReasonCode.department_not_in_conditions,
    ReasonCode.purpose_not_in_conditions,
    ReasonCode.action_not_in_conditions,
    ReasonCode.duration_exceeds_conditions,
    ReasonCode.area_outside_conditions,
)
DEFAULT_DEADLINE_DAYS = 5


@dataclass(frozen=True)
class ColumnContext:
    """What decisions depend on besides the feed and the request: the clock, the settings and
    each owner department's answer deadline (working days; unknown owners get the default)."""

    now: datetime
    emergency_grant_minutes: int
    timezone: ZoneInfo
    deadline_days: Mapping[str, int]

    def for_owner(self, owner: str) -> PolicyContext:
        return PolicyContext(
            now=self.now,
            owner_deadline_days=self.deadline_days.get(owner, DEFAULT_DEADLINE_DAYS),
            emergency_grant_minutes=self.emergency_grant_minutes,
            timezone=self.timezone,
        )


@dataclass(frozen=True)
class ColumnDecisions:
    """Per feed: the decision without its message (shared by the feeds decided alike) and the
    message."""

    templates: list[PolicyDecision]
    messages: list[str]

    def decision(self, row: int) -> PolicyDecision:
        return replace(self.templates[row], message=self.messages[row])

    def __len__(self) -> int:
        return len(self.messages)


def decide_columns(
    feeds: FeedColumns, request: RequestFacts, context: ColumnContext
) -> ColumnDecisions:
    """Decides every feed of the request; equal, feed by feed, to ``decide``."""
    count = len(feeds)
    if feeds.found.any():
        check_emergency_allowed(request)  # as decide() does for each feed it is given
    reason = np.full(count, UNDECIDED, dtype=np.int16)

    def settle(holds: np.ndarray, code: ReasonCode) -> None:
        reason[holds & (reason == UNDECIDED)] = CODE[code]

    settle(~feeds.found, ReasonCode.feed_not_found)
    settle(feeds.retired, ReasonCode.feed_not_active)
    unsupported_by_kind = [request.actions - supported_actions(kind) for kind in KINDS]
    unsupported_kinds = [code for code, actions in enumerate(unsupported_by_kind) if actions]
    settle(np.isin(feeds.kind, unsupported_kinds), ReasonCode.action_not_supported)
    settle(feeds.owner == request.requester_department, ReasonCode.own_department)
    settle(feeds.sharing == SHARING_CODE["not_shared"], ReasonCode.not_shared_legal_basis)
    settle(feeds.sharing == SHARING_CODE["unconditional"], ReasonCode.unconditional_sharing)
    conditional = np.flatnonzero(reason == UNDECIDED)
    unmet_messages: dict[int, str] = {}
    if conditional.size:
        unmet = _first_unmet(feeds, conditional, request, unmet_messages)
        if emergency_applies(request):
            unmet = np.where(unmet == UNDECIDED, UNDECIDED, CODE[ReasonCode.emergency_live_access])
        reason[conditional] = np.where(unmet == UNDECIDED, CODE[ReasonCode.conditions_met], unmet)
    return _decisions(feeds, request, context, reason, unmet_messages)


def _first_unmet(
    feeds: FeedColumns,
    rows: np.ndarray,
    request: RequestFacts,
    messages: dict[int, str],
) -> np.ndarray:
    """For each conditional feed at ``rows``: the reason code of its first unmet condition,
    UNDECIDED where all are met. ``messages`` gets the unmet condition's message per row."""
    conditions: list[SharingConditions] = [feeds.rules[row].conditions for row in rows.tolist()]
    count = len(conditions)
    department = request.requester_department
    outside = [
        actions_outside(request, rule.actions) if rule.actions is not None else set()
        for rule in conditions
    ]
    limits = np.fromiter(
        (np.nan if rule.max_duration_minutes is None else rule.max_duration_minutes
         for rule in conditions),
        np.float64, count,
    )  # fmt: skip
    areas = np.array([rule.area for rule in conditions] + [None], dtype=object)[:count]
    has_area = shapely.is_geometry(areas)
    area_unmet = (
        has_area if request.area is None else has_area & ~shapely.covers(areas, request.area)
    )
    unmet = np.select(
        [
            np.fromiter(
                (rule.departments is not None and department not in rule.departments
                 for rule in conditions), bool, count,
            ),
            np.fromiter(
                (rule.purposes is not None and request.purpose not in rule.purposes
                 for rule in conditions), bool, count,
            ),
            np.fromiter((bool(actions) for actions in outside), bool, count),
            limits < request.duration_minutes,  # NaN (no limit) compares False
            area_unmet,
        ],
        [CODE[code] for code in CONDITION_REASONS],
        UNDECIDED,
    )  # fmt: skip
    for position in np.flatnonzero(unmet != UNDECIDED).tolist():
        code = REASONS[unmet[position]]
        if code is ReasonCode.department_not_in_conditions:
            text = department_unmet_message(request)
        elif code is ReasonCode.purpose_not_in_conditions:
            text = purpose_unmet_message(request)
        elif code is ReasonCode.action_not_in_conditions:
            text = actions_unmet_message(outside[position])
        elif code is ReasonCode.duration_exceeds_conditions:
            limit = conditions[position].max_duration_minutes
            assert limit is not None
            text = duration_unmet_message(request, limit)
        else:
            text = area_unmet_message(request)
        messages[int(rows[position])] = text
    return unmet


def _decisions(
    feeds: FeedColumns,
    request: RequestFacts,
    context: ColumnContext,
    reason: np.ndarray,
    unmet_messages: dict[int, str],
) -> ColumnDecisions:
    """Each feed's decision from its reason code: one template per kind of decision."""
    templates: list[PolicyDecision] = []
    messages: list[str] = []
    shared: dict[object, PolicyDecision] = {}
    emergency: PolicyDecision | None = None
    for row, code in enumerate(reason.tolist()):
        why = REASONS[code]
        feed_id = feeds.ids[row]
        if why is ReasonCode.feed_not_found:
            template, message = _denied(shared, why), missing_message(feed_id)
        elif why is ReasonCode.feed_not_active:
            template, message = _denied(shared, why), inactive_message(feed_id)
        elif why is ReasonCode.action_not_supported:
            kind = KINDS[feeds.kind[row]]
            template = _denied(shared, why)
            message = unsupported_message(kind, request.actions - supported_actions(kind))
        elif why is ReasonCode.not_shared_legal_basis:
            template = _denied(shared, why)
            message = not_shared_message(feeds.rules[row].legal_basis)
        elif why in GRANTED_MESSAGES:
            template = shared.get(why) or shared.setdefault(why, granted_decision(why, "", request))
            message = GRANTED_MESSAGES[why]
        elif why is ReasonCode.emergency_live_access:
            if emergency is None:
                emergency = emergency_grant(request, context.for_owner(feeds.owner[row]))
            template, message = emergency, emergency.message
        else:  # an unmet condition: the owner decides by its deadline
            owner = str(feeds.owner[row])
            key = (why, owner)
            template = shared.get(key) or shared.setdefault(
                key, pending_decision(why, "", request, _due(context, owner))
            )
            message = pending_message(unmet_messages[row], owner)
        templates.append(template)
        messages.append(message)
    return ColumnDecisions(templates, messages)


GRANTED_MESSAGES = {
    ReasonCode.own_department: OWN_DEPARTMENT_MESSAGE,
    ReasonCode.unconditional_sharing: UNCONDITIONAL_MESSAGE,
    ReasonCode.conditions_met: CONDITIONS_MET_MESSAGE,
}


def _denied(shared: dict[object, PolicyDecision], reason: ReasonCode) -> PolicyDecision:
    found = shared.get(reason)
    if found is None:
        found = shared[reason] = PolicyDecision(Outcome.denied, reason, "")
    return found


def _due(context: ColumnContext, owner: str) -> datetime:
    owner_context = context.for_owner(owner)
    return add_working_days(context.now, owner_context.owner_deadline_days, context.timezone)
