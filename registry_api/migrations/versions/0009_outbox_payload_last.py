"""outbox payload last: on SQLite the small columns go before the payload

Revision ID: 0009_outbox_payload_last
Revises: 0008_outbox_codec

SQLite stores a row's columns in their declared order, and a payload larger than a page
(a bundle: 60 KB on average in the demo city, up to a MiB) spills into a chain of overflow
pages. ``messages``, ``codec`` and ``sent_at`` were added after the payload (0007, 0008), so
the relay's read of the unsent rows' ``messages`` walked each row's whole overflow chain:
35 ms for 500 bundle rows, 0.7 ms with the payload last (a copy of the demo's registry).
The table is rebuilt with the payload as its last column. PostgreSQL keeps large values out
of the row (TOAST) and reads the other columns without them: nothing to do there.
"""

from __future__ import annotations

from alembic import op

revision = "0009_outbox_payload_last"
down_revision = "0008_outbox_codec"
branch_labels = None
depends_on = None

ORDER = ("id", "topic", "key", "messages", "codec", "created_at", "sent_at", "payload")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("outbox", recreate="always", partial_reordering=[ORDER]):
        pass


def downgrade() -> None:
    # The order is only where SQLite keeps the columns: any order reads the same rows.
    pass
