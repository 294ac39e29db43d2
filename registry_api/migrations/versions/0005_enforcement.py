"""enforcement: the sessions each grant holds open, to cut on revocation and at its end

Revision ID: 0005_enforcement
Revises: 0004_catalog
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_api.db import UtcDateTime

revision = "0005_enforcement"
down_revision = "0004_catalog"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "grant_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("grant_id", sa.String(32), sa.ForeignKey("grants.id"), nullable=False),
        sa.Column("grant_ends_at", UtcDateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("server", sa.String(200), nullable=False),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("app", sa.String(64), nullable=True),
        sa.Column("stream", sa.String(300), nullable=True),
        sa.Column("protocol", sa.String(16), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("opened_at", UtcDateTime(), nullable=False),
        sa.Column("cut_reason", sa.String(16), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("set_aside_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint(
            "kind", "server", "session_id", name="uq_grant_sessions_server_session"
        ),
    )
    op.create_index("ix_grant_sessions_grant_id", "grant_sessions", ["grant_id"])
    op.create_index("ix_grant_sessions_grant_ends_at", "grant_sessions", ["grant_ends_at"])
    op.create_index("ix_grant_sessions_next_attempt_at", "grant_sessions", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_table("grant_sessions")
