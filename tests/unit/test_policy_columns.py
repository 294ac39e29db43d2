"""The policy over columns answers every feed exactly as the per-feed decision table does."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from shapely.geometry import box

from registry_api.access.feed_columns import FeedColumns, SharingRules
from registry_api.access.policy import (
    EmergencyNotAllowed,
    FeedSharing,
    PolicyContext,
    PolicyDecision,
    RequestFacts,
    SharingClass,
    SharingConditions,
    decide,
    missing_message,
)
from registry_api.access.policy_columns import (
    DEFAULT_DEADLINE_DAYS,
    ColumnContext,
    decide_columns,
)
from registry_api.feeds.index.records import KIND_CODE, SHARING_CODE
from schemas.access import AccessAction, Outcome, ReasonCode

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2025, 3, 14, 7, 30, tzinfo=UTC)  # a Friday afternoon in Lanzhou
TRANSPORT, POLICE, URBAN, ENVIRONMENT = "lz-jtj", "lz-gaj", "lz-cgj", "lz-hbj"
DEADLINES = {TRANSPORT: 3, POLICE: 7}  # URBAN has none on record: the default applies
ALLOWED_AREA = box(103.7, 36.0, 103.9, 36.1)

CONDITION_VARIANTS = [
    SharingConditions(),
    SharingConditions(
        departments=frozenset({URBAN, POLICE}),
        purposes=frozenset({"traffic management"}),
        actions=frozenset({"live", "snapshot"}),
        max_duration_minutes=120,
        area=ALLOWED_AREA,
    ),
    SharingConditions(actions=frozenset({"live"})),
    SharingConditions(max_duration_minutes=30),
    SharingConditions(area=ALLOWED_AREA),
    SharingConditions(purposes=frozenset({"public safety", "traffic management"})),
]


def mixed_feeds() -> list[FeedSharing | str]:
    """Every sharing class x written conditions x kind x retired x owner, and unknown ids."""
    feeds: list[FeedSharing | str] = ["unknown-1"]
    serial = itertools.count()
    for sharing, conditions, kind, active, owner, basis in itertools.product(
        SharingClass, CONDITION_VARIANTS, ("camera", "sensor"), (True, False),
        (TRANSPORT, POLICE, URBAN), ("Data Security Law (2021)", None),
    ):  # fmt: skip
        if sharing is not SharingClass.conditional and conditions != SharingConditions():
            continue
        if sharing is not SharingClass.not_shared and basis is not None:
            continue
        feeds.append(
            FeedSharing(
                feed_id=f"feed{next(serial):04d}",
                owner_department=owner,
                feed_kind=kind,
                sharing_class=sharing,
                conditions=conditions,
                legal_basis=basis,
                active=active,
            )
        )
    feeds.append("unknown-2")
    return feeds


def as_columns(feeds: list[FeedSharing | str]) -> FeedColumns:
    """The columns requested_feed_columns() would give for these feeds."""
    known = [feed for feed in feeds if isinstance(feed, FeedSharing)]
    found = np.array([isinstance(feed, FeedSharing) for feed in feeds])
    owner = np.array([None] + [feed.owner_department for feed in known], dtype=object)
    rows = np.cumsum(found) * found  # 0: not found, else 1 + position among the known
    rules = np.full(len(feeds), None, dtype=object)
    for position, feed in enumerate(feeds):
        if isinstance(feed, FeedSharing):
            rules[position] = feed
    return FeedColumns(
        ids=[feed.feed_id if isinstance(feed, FeedSharing) else feed for feed in feeds],
        found=found,
        owner=owner[rows],
        kind=np.array([-1] + [KIND_CODE[feed.feed_kind] for feed in known], np.int8)[rows],
        sharing=np.array(
            [-1] + [SHARING_CODE[feed.sharing_class.value] for feed in known], np.int8
        )[rows],
        retired=np.array([False] + [not feed.active for feed in known])[rows],
        rules=rules,
    )


def requests() -> list[RequestFacts]:
    inside, outside = box(103.8, 36.05, 103.85, 36.07), box(104.5, 36.5, 104.6, 36.6)
    made = []
    for department, purpose, actions, minutes, area, emergency in itertools.product(
        (URBAN, ENVIRONMENT, TRANSPORT, POLICE),
        ("traffic management", "curiosity"),
        ({"live"}, {"live", "playback"}, {"snapshot"}, {"read"}, {"read", "live"}),
        (20, 30, 120, 600),  # 30 and 120: exactly at a written limit
        (None, inside, outside),
        (False, True),
    ):
        if emergency and department != POLICE:
            continue
        made.append(
            RequestFacts(
                requester_department=department,
                requester_department_kind="public_security" if department == POLICE else "other",
                purpose=purpose,
                actions=frozenset(AccessAction(action) for action in actions),
                valid_from=NOW + timedelta(minutes=5),
                valid_until=NOW + timedelta(minutes=5 + minutes),
                emergency=emergency,
                emergency_reason="bridge incident" if emergency else None,
                area=area,
            )
        )
    return made


CONTEXT = ColumnContext(
    now=NOW, emergency_grant_minutes=30, timezone=SHANGHAI, deadline_days=DEADLINES
)


def expected(feed: FeedSharing | str, request: RequestFacts) -> PolicyDecision:
    """What the per-feed path decided: decide(), or not found for an unknown id."""
    if isinstance(feed, str):
        return PolicyDecision(Outcome.denied, ReasonCode.feed_not_found, missing_message(feed))
    context = PolicyContext(
        now=NOW,
        owner_deadline_days=DEADLINES.get(feed.owner_department, DEFAULT_DEADLINE_DAYS),
        emergency_grant_minutes=30,
        timezone=SHANGHAI,
    )
    return decide(feed, request, context)


def test_every_feed_of_a_mixed_request_is_decided_exactly_as_decide_does() -> None:
    feeds = mixed_feeds()
    columns = as_columns(feeds)
    reasons_seen: set[ReasonCode] = set()
    for request in requests():
        decisions = decide_columns(columns, request, CONTEXT)
        assert len(decisions) == len(feeds)
        for row, feed in enumerate(feeds):
            want = expected(feed, request)
            assert decisions.decision(row) == want, (feed, request)
            reasons_seen.add(want.reason)
    # The mix reaches every reason the policy can give on its own (the owner's are not its).
    owners_reasons = {
        ReasonCode.approved_by_owner,
        ReasonCode.emergency_confirmed,
        ReasonCode.denied_by_owner,
    }
    assert reasons_seen == set(ReasonCode) - owners_reasons


def test_emergency_from_a_department_other_than_public_security_is_refused_as_before() -> None:
    request = RequestFacts(
        requester_department=URBAN,
        requester_department_kind="urban_management",
        purpose="traffic management",
        actions=frozenset({AccessAction.live}),
        valid_from=NOW,
        valid_until=NOW + timedelta(hours=1),
        emergency=True,
        emergency_reason="fire",
    )
    feeds = mixed_feeds()
    first = next(feed for feed in feeds if isinstance(feed, FeedSharing))
    with pytest.raises(EmergencyNotAllowed):
        decide(first, request, CONTEXT.for_owner(TRANSPORT))
    with pytest.raises(EmergencyNotAllowed):
        decide_columns(as_columns(feeds), request, CONTEXT)
    # As before, a request naming only unknown feeds is never asked for its emergency.
    only_unknown = decide_columns(as_columns(["gone-1", "gone-2"]), request, CONTEXT)
    assert {only_unknown.decision(row).reason for row in range(2)} == {ReasonCode.feed_not_found}


def test_sharing_rules_are_kept_by_revision_and_the_oldest_go_first() -> None:
    rules = SharingRules(limit=2)
    feed = next(feed for feed in mixed_feeds() if isinstance(feed, FeedSharing))
    rules.put("a", 1, feed)
    rules.put("b", 1, feed)
    assert rules.get("a", 1) is feed
    assert rules.get("a", 2) is None  # the feed changed since: read it again
    rules.put("c", 4, feed)  # "b" was used least recently
    assert rules.get("b", 1) is None and rules.get("a", 1) is feed and rules.get("c", 4) is feed
    assert len(rules) == 2
