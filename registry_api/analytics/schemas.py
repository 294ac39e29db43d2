"""Analytics requests and answers as clients see them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Granularity(StrEnum):
    minute = "minute"
    hour = "hour"
    day = "day"


class GroupBy(StrEnum):
    owner_department = "owner_department"
    requester_department = "requester_department"
    feed = "feed"
    kind = "kind"
    region = "region"


class TopMetric(StrEnum):
    retrievals = "retrievals"
    bytes = "bytes"
    seconds = "seconds"
    requesters = "requesters"


@dataclass(frozen=True)
class Period:
    """[start, end): every rollup bucket that starts in it, the bucket holding ``start`` too."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class UsageFilters:
    owner_department: list[str] = field(default_factory=list)
    requester_department: list[str] = field(default_factory=list)
    feed_id: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    region: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scope:
    """Whose rows a caller may read: the whole city, or rows where a department takes part."""

    department: str | None

    @property
    def is_city(self) -> bool:
        return self.department is None

    @property
    def label(self) -> str:
        return self.department or "city"


class _Answer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    period_start: datetime = Field(alias="from")
    period_end: datetime = Field(alias="to")
    scope: str = Field(description="'city', or the department whose rows these are")


# ------------------------------------------------------------------------------ usage


class UsageRow(BaseModel):
    bucket: datetime
    group: str
    retrievals: int = Field(description="retrieval.started events")
    denied: int = Field(description="retrieval.denied events")
    bytes: int = Field(description="Bytes delivered (flow reports of ended retrievals)")
    seconds: float = Field(description="Seconds watched (flow reports of ended retrievals)")
    requesters: int = Field(description="Distinct requesting users")


class UsageAnswer(_Answer):
    granularity: Granularity
    group_by: GroupBy
    rows: list[UsageRow]
    truncated: bool = False


class SharingCell(BaseModel):
    owner_department: str
    requester_department: str
    retrievals: int
    denied: int
    bytes: int
    seconds: float
    requesters: int


class SharingMatrixAnswer(_Answer):
    departments: list[str]
    rows: list[SharingCell]


class TopFeedRow(BaseModel):
    feed_id: str
    owner_department: str
    kind: str
    region: str
    retrievals: int
    bytes: int
    seconds: float
    requesters: int
    requester_departments: int


class TopFeedsAnswer(_Answer):
    metric: TopMetric
    rows: list[TopFeedRow]


# ------------------------------------------------------------------------------ alerts


class AlertRow(BaseModel):
    alert_id: str
    time: datetime
    rule: str
    severity: str
    feed_id: str
    owner_department: str
    requester_department: str
    requester_user: str
    grant_id: str
    token_id: str
    message: str
    evidence: dict[str, Any]


class AlertsAnswer(_Answer):
    counts: dict[str, int] = Field(description="Alerts per rule in the period (all pages)")
    total: int
    rows: list[AlertRow]


# ------------------------------------------------------------------------------ decisions


class DecisionDepartmentRow(BaseModel):
    owner_department: str
    requests: int
    granted: int
    denied: int
    pending: int
    answered: int
    answered_within_deadline: int
    due: int = Field(description="Answered, or pending past the deadline")
    share_within_deadline: float | None = Field(
        description="answered_within_deadline / due; None when nothing is due yet"
    )
    median_seconds_to_decision: float | None
    p95_seconds_to_decision: float | None
    escalated: int = Field(
        0, description="Feeds of these requests escalated at their due time (still pending then)"
    )


class DenyReason(BaseModel):
    reason: str
    count: int


class DecisionTotals(BaseModel):
    granted: int
    denied: int
    pending: int
    escalated: int = 0


class DecisionsAnswer(_Answer):
    totals: DecisionTotals
    deny_reasons: list[DenyReason]
    rows: list[DecisionDepartmentRow]


# ------------------------------------------------------------------------------ feeds


class DormantFeedRow(BaseModel):
    feed_id: str
    owner_department: str
    name: str
    kind: str
    region: str
    registry_status: str
    liveness: str = Field(description="Last transition seen by the heartbeat agent ('' if none)")
    liveness_changed_at: datetime | None
    retrievals: int
    reasons: list[str] = Field(description="never_retrieved, offline, never_online")


class DormantFeedsAnswer(_Answer):
    total: int
    rows: list[DormantFeedRow]


class ScorecardRow(BaseModel):
    department: str
    feeds: int
    feeds_unconditional: int
    feeds_conditional: int
    feeds_not_shared: int
    feeds_online: int
    feeds_unplaced: int = Field(
        0, description="Feeds without coordinates (catalog channels to locate)"
    )
    availability: float | None = Field(description="feeds_online / feeds")
    requests_received: int
    requests_answered: int
    requests_due: int
    requests_answered_in_time: int
    share_answered_in_time: float | None
    retrievals_by_others: int = Field(description="Retrievals of its feeds by other departments")
    bytes_by_others: int
    departments_served: int
    retrievals_of_others: int = Field(description="Its retrievals of other departments' feeds")
    departments_used: int


class ScorecardsAnswer(_Answer):
    rows: list[ScorecardRow]
