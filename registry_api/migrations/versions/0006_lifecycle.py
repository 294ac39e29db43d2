"""lifecycle: webhook subscriptions and deliveries, deadline and expiry notices, key life cycle

Revision ID: 0006_lifecycle
Revises: 0005_enforcement
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_api.db import UtcDateTime

revision = "0006_lifecycle"
down_revision = "0005_enforcement"
branch_labels = None
depends_on = None


def _big_integer() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("department_code", sa.String(32), nullable=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("description", sa.String(200), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("last_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("last_success_at", UtcDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("delivered_total", _big_integer(), nullable=False, server_default="0"),
        sa.Column("failed_total", _big_integer(), nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_webhook_subscriptions_department_code", "webhook_subscriptions", ["department_code"]
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _big_integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "subscription_id",
            sa.String(32),
            sa.ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("claimed_until", UtcDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint(
            "subscription_id", "message_id", name="uq_webhook_deliveries_subscription_message"
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_state_next_attempt",
        "webhook_deliveries",
        ["state", "next_attempt_at"],
    )
    op.create_index(
        "ix_webhook_deliveries_subscription_id", "webhook_deliveries", ["subscription_id"]
    )

    # Deadlines kept: each notice is claimed once (UPDATE ... WHERE <column> IS NULL).
    with op.batch_alter_table("access_request_feeds") as table:
        table.add_column(sa.Column("due_soon_at", UtcDateTime(), nullable=True))
        table.add_column(sa.Column("escalated_at", UtcDateTime(), nullable=True))
    # The keeper's two scans: pending items not yet escalated (or reminded), by due time.
    op.create_index(
        "ix_access_request_feeds_escalation",
        "access_request_feeds",
        ["outcome", "escalated_at", "due_at"],
    )
    op.create_index(
        "ix_access_request_feeds_due_soon",
        "access_request_feeds",
        ["outcome", "due_soon_at", "due_at"],
    )
    with op.batch_alter_table("grants") as table:
        table.add_column(sa.Column("expiry_warned_at", UtcDateTime(), nullable=True))
    op.create_index("ix_grants_expiry_warning", "grants", ["valid_until"])

    # Keys with a life cycle: a rotated key works until expires_at; every change bumps
    # updated_at, which each API replica polls to drop its cached principals.
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("expires_at", UtcDateTime(), nullable=True))
        table.add_column(sa.Column("updated_at", UtcDateTime(), nullable=True))
        table.add_column(sa.Column("replaced_by", sa.String(32), nullable=True))
        table.add_column(sa.Column("revoked_by", sa.String(200), nullable=True))
        table.add_column(sa.Column("revoke_reason", sa.String(200), nullable=True))
    op.create_index("ix_api_keys_updated_at", "api_keys", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_updated_at", table_name="api_keys")
    with op.batch_alter_table("api_keys") as table:
        for column in ("revoke_reason", "revoked_by", "replaced_by", "updated_at", "expires_at"):
            table.drop_column(column)
    op.drop_index("ix_grants_expiry_warning", table_name="grants")
    with op.batch_alter_table("grants") as table:
        table.drop_column("expiry_warned_at")
    op.drop_index("ix_access_request_feeds_due_soon", table_name="access_request_feeds")
    op.drop_index("ix_access_request_feeds_escalation", table_name="access_request_feeds")
    with op.batch_alter_table("access_request_feeds") as table:
        table.drop_column("escalated_at")
        table.drop_column("due_soon_at")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_subscriptions")
