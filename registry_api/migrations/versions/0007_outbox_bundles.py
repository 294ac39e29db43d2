"""outbox bundles: a row may hold a batch's consecutive messages to one topic

Revision ID: 0007_outbox_bundles
Revises: 0006_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_outbox_bundles"
down_revision = "0006_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before hold one message each: the default says so.
    with op.batch_alter_table("outbox") as table:
        table.add_column(sa.Column("messages", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as table:
        table.drop_column("messages")
