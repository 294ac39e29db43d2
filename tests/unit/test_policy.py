"""The sharing policy's decision table, as pure functions (no database, no clock)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shapely.geometry import box

from registry_api.access.policy import (
    EmergencyNotAllowed,
    FeedSharing,
    PolicyContext,
    RequestFacts,
    SharingClass,
    SharingConditions,
    add_working_days,
    decide,
)
from schemas.access import AccessAction, Outcome, ReasonCode

SHANGHAI = ZoneInfo("Asia/Shanghai")
# A Wednesday morning in Lanzhou.
NOW = datetime(2025, 3, 12, 2, 0, tzinfo=UTC)
CONTEXT = PolicyContext(
    now=NOW, owner_deadline_days=3, emergency_grant_minutes=30, timezone=SHANGHAI
)

OWNER = "lz-jtj"
REQUESTER = "lz-cgj"
LIVE = frozenset({AccessAction.live})

CONDITIONS = SharingConditions(
    departments=frozenset({REQUESTER, "lz-psb"}),
    purposes=frozenset({"traffic management"}),
    actions=frozenset({"live", "snapshot"}),
    max_duration_minutes=120,
    area=box(103.7, 36.0, 103.9, 36.1),
)


def _feed(sharing: SharingClass, **overrides: object) -> FeedSharing:
    values: dict[str, object] = {
        "feed_id": "feed-1",
        "owner_department": OWNER,
        "feed_kind": "camera",
        "sharing_class": sharing,
        "conditions": CONDITIONS if sharing is SharingClass.conditional else SharingConditions(),
        "legal_basis": "Data Security Law (2021): control-centre video"
        if sharing is SharingClass.not_shared
        else None,
    }
    values.update(overrides)
    return FeedSharing(**values)  # type: ignore[arg-type]


def _request(**overrides: object) -> RequestFacts:
    values: dict[str, object] = {
        "requester_department": REQUESTER,
        "requester_department_kind": "urban_management",
        "purpose": "traffic management",
        "actions": LIVE,
        "valid_from": NOW,
        "valid_until": NOW + timedelta(minutes=60),
        "area": box(103.75, 36.02, 103.8, 36.05),
    }
    values.update(overrides)
    return RequestFacts(**values)  # type: ignore[arg-type]


def test_unconditional_feed_is_granted_at_once_for_any_department() -> None:
    decision = decide(
        _feed(SharingClass.unconditional), _request(requester_department="lz-any"), CONTEXT
    )
    assert decision.outcome is Outcome.granted
    assert decision.reason is ReasonCode.unconditional_sharing
    assert decision.valid_until == NOW + timedelta(minutes=60)
    assert decision.actions == LIVE


def test_conditional_feed_is_granted_when_every_condition_fits() -> None:
    decision = decide(_feed(SharingClass.conditional), _request(), CONTEXT)
    assert (decision.outcome, decision.reason) == (Outcome.granted, ReasonCode.conditions_met)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"requester_department": "lz-hb"}, ReasonCode.department_not_in_conditions),
        ({"purpose": "curiosity"}, ReasonCode.purpose_not_in_conditions),
        (
            {"actions": frozenset({AccessAction.live, AccessAction.playback})},
            ReasonCode.action_not_in_conditions,
        ),
        ({"valid_until": NOW + timedelta(minutes=121)}, ReasonCode.duration_exceeds_conditions),
        ({"area": box(104.0, 36.0, 104.1, 36.1)}, ReasonCode.area_outside_conditions),
        ({"area": None}, ReasonCode.area_outside_conditions),
    ],
)
def test_conditional_feed_outside_a_condition_waits_for_the_owner(
    change: dict[str, object], reason: ReasonCode
) -> None:
    decision = decide(_feed(SharingClass.conditional), _request(**change), CONTEXT)
    assert decision.outcome is Outcome.pending
    assert decision.reason is reason
    # Wednesday + 3 working days = Monday, same clock time.
    assert decision.due_at == datetime(2025, 3, 17, 2, 0, tzinfo=UTC)
    assert OWNER in decision.message


def test_not_shared_feed_is_denied_citing_its_legal_basis() -> None:
    decision = decide(_feed(SharingClass.not_shared), _request(), CONTEXT)
    assert decision.outcome is Outcome.denied
    assert decision.reason is ReasonCode.not_shared_legal_basis
    assert "Data Security Law (2021)" in decision.message
    assert decision.actions == frozenset()


def test_not_shared_feed_stays_denied_in_an_emergency() -> None:
    request = _request(
        requester_department_kind="public_security", emergency=True, emergency_reason="fire"
    )
    decision = decide(_feed(SharingClass.not_shared), request, CONTEXT)
    assert decision.reason is ReasonCode.not_shared_legal_basis


def test_emergency_from_public_security_gets_live_only_briefly_and_goes_to_review() -> None:
    request = _request(
        requester_department="lz-psb-2",
        requester_department_kind="public_security",
        actions=frozenset({AccessAction.live, AccessAction.playback}),
        valid_until=NOW + timedelta(hours=8),
        emergency=True,
        emergency_reason="missing child near the station",
    )
    decision = decide(_feed(SharingClass.conditional), request, CONTEXT)
    assert decision.outcome is Outcome.granted
    assert decision.reason is ReasonCode.emergency_live_access
    assert decision.actions == LIVE
    assert decision.valid_until == NOW + timedelta(minutes=30)
    assert decision.emergency and decision.review_required


def test_emergency_never_gets_less_than_the_rules_give() -> None:
    request = _request(
        requester_department_kind="public_security", emergency=True, emergency_reason="x"
    )
    decision = decide(_feed(SharingClass.unconditional), request, CONTEXT)
    assert decision.reason is ReasonCode.unconditional_sharing
    assert not decision.review_required


def test_emergency_from_another_department_is_refused() -> None:
    request = _request(emergency=True, emergency_reason="we think it is urgent")
    with pytest.raises(EmergencyNotAllowed):
        decide(_feed(SharingClass.conditional), request, CONTEXT)


def test_emergency_without_a_reason_is_refused() -> None:
    request = _request(
        requester_department_kind="public_security", emergency=True, emergency_reason=" "
    )
    with pytest.raises(EmergencyNotAllowed):
        decide(_feed(SharingClass.conditional), request, CONTEXT)


def test_owner_department_always_gets_its_own_feed() -> None:
    decision = decide(_feed(SharingClass.not_shared), _request(requester_department=OWNER), CONTEXT)
    assert (decision.outcome, decision.reason) == (Outcome.granted, ReasonCode.own_department)


def test_sensor_actions_on_a_camera_are_denied_as_unsupported() -> None:
    decision = decide(
        _feed(SharingClass.unconditional), _request(actions=frozenset({AccessAction.read})), CONTEXT
    )
    assert (decision.outcome, decision.reason) == (Outcome.denied, ReasonCode.action_not_supported)
    sensor = _feed(SharingClass.unconditional, feed_kind="sensor")
    assert (
        decide(sensor, _request(actions=frozenset({AccessAction.read})), CONTEXT).outcome
        is Outcome.granted
    )
    assert decide(sensor, _request(actions=LIVE), CONTEXT).reason is ReasonCode.action_not_supported


def test_inactive_feed_is_denied() -> None:
    decision = decide(_feed(SharingClass.unconditional, active=False), _request(), CONTEXT)
    assert decision.reason is ReasonCode.feed_not_active


def test_every_combination_yields_exactly_one_reasoned_outcome() -> None:
    """role/department kind x sharing class x condition met or not x action x emergency."""
    unmet: list[dict[str, Any]] = [
        {},
        {"requester_department": "lz-hb"},
        {"purpose": "other"},
        {"valid_until": NOW + timedelta(days=1)},
    ]
    kinds = ["public_security", "transport"]
    actions = [frozenset({action}) for action in AccessAction]
    for sharing, change, kind, action, emergency in itertools.product(
        SharingClass, unmet, kinds, actions, [False, True]
    ):
        if emergency and kind != "public_security":
            continue
        request = _request(
            requester_department_kind=kind,
            actions=action,
            emergency=emergency,
            emergency_reason="incident" if emergency else None,
            **change,
        )
        decision = decide(_feed(sharing), request, CONTEXT)
        assert isinstance(decision.reason, ReasonCode)
        assert decision.message
        camera_action = AccessAction.read not in action
        if not camera_action:
            assert decision.outcome is Outcome.denied
        elif sharing is SharingClass.not_shared:
            assert decision.reason is ReasonCode.not_shared_legal_basis
        elif sharing is SharingClass.unconditional:
            assert decision.outcome is Outcome.granted and decision.actions == action
        else:
            conditions_fit = not change and action <= {AccessAction.live, AccessAction.snapshot}
            if conditions_fit:
                assert decision.reason is ReasonCode.conditions_met
            elif emergency and AccessAction.live in action:
                assert decision.reason is ReasonCode.emergency_live_access
            else:
                assert decision.outcome is Outcome.pending and decision.due_at is not None
        if decision.outcome is Outcome.granted:
            assert decision.valid_until is not None and decision.valid_until > NOW
            assert decision.actions
        else:
            assert decision.outcome is Outcome.pending or not decision.actions


def test_due_time_skips_the_weekend() -> None:
    friday = datetime(2025, 3, 14, 8, 0, tzinfo=UTC)  # 16:00 in Lanzhou
    assert add_working_days(friday, 1, SHANGHAI) == datetime(2025, 3, 17, 8, 0, tzinfo=UTC)
    saturday = datetime(2025, 3, 15, 8, 0, tzinfo=UTC)
    assert add_working_days(saturday, 2, SHANGHAI) == datetime(2025, 3, 18, 8, 0, tzinfo=UTC)


@given(
    start=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    days=st.integers(min_value=1, max_value=30),
)
def test_due_time_lands_on_a_working_day_at_least_n_days_later(start: datetime, days: int) -> None:
    due = add_working_days(start, days, SHANGHAI)
    assert due.astimezone(SHANGHAI).weekday() < 5
    assert due - start >= timedelta(days=days)
    assert due - start <= timedelta(days=days + 2 * (days // 5 + 1))
