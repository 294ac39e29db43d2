from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from registry_api.db import Base, UtcDateTime


class AccessRequest(Base):
    """A department asking for feeds, for one purpose, some actions and a time window."""

    __tablename__ = "access_requests"
    # A department's own requests, newest first, a page at a time (0012_department_lists)
    __table_args__ = (
        Index("ix_access_requests_requester_created", "requester_department", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requester: Mapped[str] = mapped_column(String(200))
    requester_department: Mapped[str] = mapped_column(ForeignKey("departments.code"))
    purpose: Mapped[str] = mapped_column(String(200))
    actions: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime())
    valid_until: Mapped[datetime] = mapped_column(UtcDateTime())
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    emergency_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    area: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


# The deadline keeper's two scans (registry_api.subscriptions.deadlines): pending items not
# escalated yet, and pending items not reminded of yet, by due time. Partial indexes hold only
# those items: a feed granted or denied at once never enters them, and a decision or a claim
# takes an item out, so they stay as small as the work waiting instead of growing with every
# item ever requested (0010_pending_deadline_indexes).
TO_ESCALATE = "outcome = 'pending' AND escalated_at IS NULL"
TO_REMIND = "outcome = 'pending' AND due_soon_at IS NULL"


def _partial(name: str, where: str) -> Index:
    return Index(name, "due_at", sqlite_where=text(where), postgresql_where=text(where))


class AccessRequestFeed(Base):
    """The decision on one feed of a request: granted, pending (with a due time) or denied."""

    __tablename__ = "access_request_feeds"
    __table_args__ = (
        # An owner's inbox: does this request hold an item of mine (in this state)? and
        # which of these requests' items are mine? One seek per request either way
        # (0011_owner_request_index).
        Index("ix_access_request_feeds_owner_request", "owner_department", "request_id", "outcome"),
        _partial("ix_access_request_feeds_to_escalate", TO_ESCALATE),
        _partial("ix_access_request_feeds_to_remind", TO_REMIND),
    )

    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), primary_key=True)
    feed_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_department: Mapped[str | None] = mapped_column(String(32), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(String(1200))
    actions: Mapped[list[str]] = mapped_column(JSON)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    grant_id: Mapped[str | None] = mapped_column(ForeignKey("grants.id"), nullable=True, index=True)
    review_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # When the owner was told the due time is near, and when the overdue item was escalated
    # (each claimed once, by whichever replica's deadline keeper gets there first).
    due_soon_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Grant(Base):
    """Feeds of one owner granted to one department for a window and actions; revocable."""

    __tablename__ = "grants"
    __table_args__ = (
        Index("ix_grants_expiry_warning", "valid_until"),
        # the grants a department holds, and those on its feeds, newest first (0012)
        Index("ix_grants_requester_created", "requester_department", "created_at"),
        Index("ix_grants_owner_created", "owner_department", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), index=True)
    requester: Mapped[str] = mapped_column(String(200))
    requester_department: Mapped[str] = mapped_column(String(32))
    owner_department: Mapped[str] = mapped_column(String(32))
    actions: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime())
    valid_until: Mapped[datetime] = mapped_column(UtcDateTime())
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    review_required: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # When the requester was told the grant ends soon (claimed once by the deadline keeper).
    expiry_warned_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class GrantFeed(Base):
    __tablename__ = "grant_feeds"

    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id"), primary_key=True)
    feed_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
