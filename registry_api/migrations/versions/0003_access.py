"""access: requests, per-feed decisions, grants, the audit hash chain

Revision ID: 0003_access
Revises: 0002_feeds
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_api.db import UtcDateTime

revision = "0003_access"
down_revision = "0002_feeds"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64


def _big_integer() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("requester", sa.String(200), nullable=False),
        sa.Column(
            "requester_department", sa.String(32), sa.ForeignKey("departments.code"), nullable=False
        ),
        sa.Column("purpose", sa.String(200), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("valid_from", UtcDateTime(), nullable=False),
        sa.Column("valid_until", UtcDateTime(), nullable=False),
        sa.Column("emergency", sa.Boolean(), nullable=False),
        sa.Column("emergency_reason", sa.String(500), nullable=True),
        sa.Column("area", sa.JSON(), nullable=True),
        sa.Column("selection", sa.JSON(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index(
        "ix_access_requests_requester_department", "access_requests", ["requester_department"]
    )
    op.create_index("ix_access_requests_created_at", "access_requests", ["created_at"])

    op.create_table(
        "grants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("request_id", sa.String(32), sa.ForeignKey("access_requests.id"), nullable=False),
        sa.Column("requester", sa.String(200), nullable=False),
        sa.Column("requester_department", sa.String(32), nullable=False),
        sa.Column("owner_department", sa.String(32), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("valid_from", UtcDateTime(), nullable=False),
        sa.Column("valid_until", UtcDateTime(), nullable=False),
        sa.Column("emergency", sa.Boolean(), nullable=False),
        sa.Column("review_required", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.Column("revoke_reason", sa.String(500), nullable=True),
    )
    op.create_index("ix_grants_request_id", "grants", ["request_id"])
    op.create_index("ix_grants_requester_department", "grants", ["requester_department"])
    op.create_index("ix_grants_owner_department", "grants", ["owner_department"])
    op.create_index("ix_grants_revoked_at", "grants", ["revoked_at"])

    op.create_table(
        "grant_feeds",
        sa.Column("grant_id", sa.String(32), sa.ForeignKey("grants.id"), primary_key=True),
        sa.Column("feed_id", sa.String(64), primary_key=True),
    )
    op.create_index("ix_grant_feeds_feed_id", "grant_feeds", ["feed_id"])

    op.create_table(
        "access_request_feeds",
        sa.Column(
            "request_id", sa.String(32), sa.ForeignKey("access_requests.id"), primary_key=True
        ),
        sa.Column("feed_id", sa.String(64), primary_key=True),
        sa.Column("owner_department", sa.String(32), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.String(1200), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=True),
        sa.Column("decided_at", UtcDateTime(), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("grant_id", sa.String(32), sa.ForeignKey("grants.id"), nullable=True),
        sa.Column("review_required", sa.Boolean(), nullable=False),
    )
    op.create_index(
        "ix_access_request_feeds_owner_outcome",
        "access_request_feeds",
        ["owner_department", "outcome"],
    )
    op.create_index("ix_access_request_feeds_grant_id", "access_request_feeds", ["grant_id"])

    op.create_table(
        "audit_log",
        sa.Column("seq", _big_integer(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("feed_id", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(32), nullable=True),
        sa.Column("grant_id", sa.String(32), nullable=True),
        sa.Column("requester_department", sa.String(32), nullable=True),
        sa.Column("owner_department", sa.String(32), nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("previous_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_audit_log_event_id"),
    )
    for column in (
        "event_type",
        "occurred_at",
        "feed_id",
        "request_id",
        "grant_id",
        "requester_department",
        "owner_department",
    ):
        op.create_index(f"ix_audit_log_{column}", "audit_log", [column])

    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("last_seq", _big_integer(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    from datetime import UTC, datetime

    op.bulk_insert(
        head, [{"id": 1, "last_seq": 0, "last_hash": GENESIS_HASH, "updated_at": datetime.now(UTC)}]
    )
    # Media-server hooks name a feed by its gateway path; this keeps that lookup an index probe.
    op.create_index("ix_feeds_media_path", "feeds", ["media_path"])


def downgrade() -> None:
    op.drop_index("ix_feeds_media_path", table_name="feeds")
    op.drop_table("audit_chain_head")
    op.drop_table("audit_log")
    op.drop_table("access_request_feeds")
    op.drop_table("grant_feeds")
    op.drop_table("grants")
    op.drop_table("access_requests")
