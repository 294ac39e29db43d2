"""Webhook subscriptions and their deliveries as clients see them (Standard Webhooks)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.identity import DEPARTMENT_CODE_PATTERN

MAX_URL_CHARS = 2048
# "whsec_" and the base64 of 24 to 64 random bytes, as Standard Webhooks secrets are written.
SECRET_PATTERN = r"^whsec_[A-Za-z0-9+/]{32,88}={0,2}$"


class NotificationKind(StrEnum):
    """What a department can be told. Each notification names one of these in ``type``."""

    request_pending = "request.pending"  # a request waits for your decision (owner)
    request_due_soon = "request.due_soon"  # its due time is near (owner)
    request_overdue = "request.overdue"  # the due time passed: escalated (owner, city admin)
    request_decided = "request.decided"  # the owner approved or denied (requester)
    grant_expiring = "grant.expiring"  # your grant ends soon (requester)
    grant_revoked = "grant.revoked"  # a grant was revoked (requester and owner)
    feed_offline = "feed.offline"  # a feed you hold a grant on went offline (requester)
    ping = "ping"  # sent on demand to check an endpoint


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8,
        max_length=MAX_URL_CHARS,
        description="https://..., or http:// to a loopback address (127.0.0.1, ::1, localhost). "
        "Link-local and cloud metadata addresses are refused.",
        examples=["https://hooks.lz-jtj.gov.cn/feedgrid"],
    )
    kinds: list[NotificationKind] = Field(min_length=1, max_length=len(NotificationKind))
    department: str | None = Field(
        None,
        pattern=DEPARTMENT_CODE_PATTERN,
        description="Whose notifications; the caller's department when absent. The city admin "
        "may leave it out for a city-wide subscription (every department's events of its kinds)",
    )
    secret: str | None = Field(
        None,
        pattern=SECRET_PATTERN,
        description="whsec_<base64 of 24-64 bytes>; one is generated when absent. Shown once.",
    )
    description: str | None = Field(None, max_length=200)


class DeliveryStatus(BaseModel):
    """How delivery to this endpoint goes, from the newest attempts."""

    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_status: int | None = Field(description="HTTP status of the last attempt; 0: no answer")
    last_error: str | None
    consecutive_failures: int
    delivered: int = Field(description="Notifications delivered since the subscription began")
    failed: int = Field(description="Notifications set aside after their last attempt")
    pending: int = Field(description="Notifications waiting for their next attempt")
    next_attempt_at: datetime | None = Field(description="The earliest pending attempt")


class SubscriptionOut(BaseModel):
    id: str
    department: str | None
    url: str
    kinds: list[NotificationKind]
    description: str | None
    created_at: datetime
    created_by: str
    status: DeliveryStatus


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="The signing secret (whsec_...). Shown once, never again.")


class DeliveryState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class DeliveryOut(BaseModel):
    id: int
    message_id: str = Field(description="webhook-id: the same on every attempt")
    kind: NotificationKind
    state: DeliveryState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    finished_at: datetime | None


class DeliveryPage(BaseModel):
    subscription_id: str
    status: DeliveryStatus
    deliveries: list[DeliveryOut]
