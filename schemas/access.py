"""Access requests, decisions, grants, retrieval URLs and the audit log as clients see them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.enforcement import MqttCredentials
from schemas.feeds import FeedSearch, SearchGeometry
from schemas.times import ZonedTime

# A feed id as a client names it. The length bounds also make pydantic check that the text
# is Unicode: an unbounded str lets a lone surrogate ("\ud800") through to the database.
FeedIdText = Annotated[str, Field(min_length=1, max_length=64)]


class AccessAction(StrEnum):
    live = "live"
    playback = "playback"
    snapshot = "snapshot"
    ptz = "ptz"
    download = "download"
    read = "read"


CAMERA_ACTIONS = frozenset(
    {
        AccessAction.live,
        AccessAction.playback,
        AccessAction.snapshot,
        AccessAction.ptz,
        AccessAction.download,
    }
)
SENSOR_ACTIONS = frozenset({AccessAction.read, AccessAction.download})


class Outcome(StrEnum):
    granted = "granted"
    pending = "pending"
    denied = "denied"


class ReasonCode(StrEnum):
    """Why a feed was granted, left pending or denied: stable, machine-readable."""

    own_department = "own_department"
    unconditional_sharing = "unconditional_sharing"
    conditions_met = "conditions_met"
    emergency_live_access = "emergency_live_access"
    approved_by_owner = "approved_by_owner"
    emergency_confirmed = "emergency_confirmed"
    department_not_in_conditions = "department_not_in_conditions"
    purpose_not_in_conditions = "purpose_not_in_conditions"
    action_not_in_conditions = "action_not_in_conditions"
    duration_exceeds_conditions = "duration_exceeds_conditions"
    area_outside_conditions = "area_outside_conditions"
    not_shared_legal_basis = "not_shared_legal_basis"
    action_not_supported = "action_not_supported"
    feed_not_active = "feed_not_active"
    feed_not_found = "feed_not_found"
    denied_by_owner = "denied_by_owner"


class RequestStatus(StrEnum):
    """The state of a whole request, from the states of its feeds."""

    pending = "pending"
    granted = "granted"
    denied = "denied"
    partial = "partial"


class AccessRequestCreate(BaseModel):
    """Ask for feeds by id or by a spatial selection, for one purpose, actions and time window."""

    model_config = ConfigDict(extra="forbid")

    feed_ids: list[FeedIdText] | None = Field(None, min_length=1, max_length=1000)
    selection: FeedSearch | None = Field(
        None,
        description=(
            "A feed search with the registry's filters (near, bbox, sees, geometry, kind, "
            "department, ...); every feed it finds is requested, up to its limit"
        ),
        examples=[{"near": "103.83,36.06,800", "kind": "camera", "department": "lz-jtj"}],
    )
    purpose: str = Field(min_length=1, max_length=200, examples=["traffic management"])
    actions: list[AccessAction] = Field(min_length=1, max_length=6)
    valid_from: ZonedTime | None = Field(None, description="Start of the window; now when absent")
    duration_minutes: int = Field(60, ge=1, le=60 * 24 * 366)
    emergency: bool = Field(
        False, description="Public security only, with a reason: live view at once"
    )
    emergency_reason: str | None = Field(None, max_length=500)
    area: SearchGeometry | None = Field(
        None,
        description="GeoJSON Polygon of the area of interest (checked against area conditions)",
    )

    @model_validator(mode="after")
    def _one_selection_and_a_reason(self) -> AccessRequestCreate:
        if (self.feed_ids is None) == (self.selection is None):
            raise ValueError("give exactly one of feed_ids and selection")
        if self.emergency and not (self.emergency_reason and self.emergency_reason.strip()):
            raise ValueError("an emergency request needs an emergency_reason")
        if self.valid_from is not None and self.valid_from.tzinfo is None:
            raise ValueError("valid_from needs a time zone")
        return self


class FeedDecisionOut(BaseModel):
    feed_id: str
    owner_department: str | None
    outcome: Outcome
    reason: ReasonCode
    message: str
    actions: list[AccessAction]
    grant_id: str | None = None
    due_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    review_required: bool = False


class AccessRequestOut(BaseModel):
    id: str
    requester: str
    requester_department: str
    purpose: str
    actions: list[AccessAction]
    valid_from: datetime
    valid_until: datetime
    emergency: bool
    emergency_reason: str | None
    status: RequestStatus
    created_at: datetime
    counts: dict[str, int]
    feeds: list[FeedDecisionOut]


class OwnerDecision(BaseModel):
    """The owner's answer; without feed_ids it covers every feed of the request it owns."""

    model_config = ConfigDict(extra="forbid")

    feed_ids: list[FeedIdText] | None = Field(None, min_length=1, max_length=1000)
    comment: str | None = Field(None, max_length=1000)


class GrantOut(BaseModel):
    id: str
    request_id: str
    requester: str
    requester_department: str
    owner_department: str
    feed_ids: list[str]
    actions: list[AccessAction]
    valid_from: datetime
    valid_until: datetime
    emergency: bool
    review_required: bool
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None


class RevokeGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class RetrievalUrl(BaseModel):
    protocol: str
    url: str
    auth: Literal["query_token", "bearer_header", "mqtt_password"]
    note: str


class FeedRetrieval(BaseModel):
    feed_id: str
    protocol: str = Field(description="The feed's own protocol; its URL comes first")
    media_path: str = Field(description="The path on the media gateway")
    token: str = Field(
        description="EdDSA JWT (also verifiable by MediaMTX authMethod jwt via the JWKS)"
    )
    compact_token: str | None = Field(
        None,
        description="The same grant in under 256 characters, for RTMP (nginx-rtmp cuts play "
        "arguments at 256 bytes); checked by FeedGrid's hooks only",
    )
    token_id: str
    expires_at: datetime
    urls: list[RetrievalUrl]


class RetrievalOut(BaseModel):
    grant_id: str
    actions: list[AccessAction]
    feeds: list[FeedRetrieval]
    mqtt: MqttCredentials | None = Field(
        None, description="Broker credentials for the grant's sensor topics (sensor grants)"
    )
    mqtt_unavailable: str | None = Field(
        None, description="Why no broker credentials came with a sensor grant (retry later)"
    )


class AuditEntryOut(BaseModel):
    seq: int
    event_id: str
    event_type: str
    occurred_at: datetime
    actor: str | None
    feed_id: str | None
    request_id: str | None
    grant_id: str | None
    requester_department: str | None
    owner_department: str | None
    decision: str | None
    reason: str | None
    data: dict[str, Any]
    previous_hash: str
    entry_hash: str


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    next_after_seq: int | None = Field(description="Pass as after_seq to read on; null at the end")


class AuditVerification(BaseModel):
    ok: bool
    entries_checked: int
    last_seq: int | None
    first_broken_seq: int | None = None
    problem: str | None = None
    message: str
