"""outbox codec: a bundle row's payload may be stored compressed

Revision ID: 0008_outbox_codec
Revises: 0007_outbox_bundles
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_outbox_codec"
down_revision = "0007_outbox_bundles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before are stored as they are: NULL says so.
    with op.batch_alter_table("outbox") as table:
        table.add_column(sa.Column("codec", sa.String(16), nullable=True))


def downgrade() -> None:
    # Compressed bundles would be unreadable without the column: the relay publishes them
    # first (a downgrade of a registry with unsent compressed rows is refused).
    bind = op.get_bind()
    unsent = bind.execute(
        sa.text("SELECT count(*) FROM outbox WHERE codec IS NOT NULL AND sent_at IS NULL")
    ).scalar()
    if unsent:
        raise RuntimeError(
            f"{unsent} compressed outbox rows are not published yet: "
            "let the relay publish them before downgrading"
        )
    with op.batch_alter_table("outbox") as table:
        table.drop_column("codec")
