"""pending deadline indexes: the deadline keeper's indexes hold only the items it may claim

Revision ID: 0010_pending_deadline_indexes
Revises: 0009_outbox_payload_last

The keeper's two scans (pending items not escalated yet, pending items not reminded of yet, by
due time) were indexes over every item ever requested: ``(outcome, escalated_at, due_at)`` and
``(outcome, due_soon_at, due_at)``. Most items are granted or denied the moment they are
requested, and every one of them took an entry in both, written in the request's own
transaction: 22 of the 305 pages an access request for 100 feeds wrote to SQLite's log, on a
copy of the demo city. They are now partial indexes on ``due_at`` of the items each scan may
claim: an item leaves them when it is decided or claimed, so they are as large as the work
waiting.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_pending_deadline_indexes"
down_revision = "0009_outbox_payload_last"
branch_labels = None
depends_on = None

TABLE = "access_request_feeds"
PARTIAL = {
    "ix_access_request_feeds_to_escalate": "outcome = 'pending' AND escalated_at IS NULL",
    "ix_access_request_feeds_to_remind": "outcome = 'pending' AND due_soon_at IS NULL",
}
WHOLE = {
    "ix_access_request_feeds_escalation": ["outcome", "escalated_at", "due_at"],
    "ix_access_request_feeds_due_soon": ["outcome", "due_soon_at", "due_at"],
}


def upgrade() -> None:
    for name in WHOLE:
        op.drop_index(name, table_name=TABLE)
    for name, where in PARTIAL.items():
        op.create_index(
            name, TABLE, ["due_at"], sqlite_where=sa.text(where), postgresql_where=sa.text(where)
        )


def downgrade() -> None:
    for name in PARTIAL:
        op.drop_index(name, table_name=TABLE)
    for name, columns in WHOLE.items():
        op.create_index(name, TABLE, columns)
