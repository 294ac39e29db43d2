"""catalog: unplaced feeds, GB/T 28181 catalog nodes, pending catalog parts, duplicate decisions

Revision ID: 0004_catalog
Revises: 0003_access
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_api.db import UtcDateTime

revision = "0004_catalog"
down_revision = "0003_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A feed without coordinates (an unplaced camera of a platform's catalog) is a real state.
    with op.batch_alter_table("feeds") as feeds:
        feeds.alter_column("lon", existing_type=sa.Float(), nullable=True)
        feeds.alter_column("lat", existing_type=sa.Float(), nullable=True)
    op.create_table(
        "catalog_nodes",
        sa.Column("owner", sa.String(32), sa.ForeignKey("departments.code"), primary_key=True),
        sa.Column("device_id", sa.String(20), primary_key=True),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("parent_id", sa.String(20), nullable=True),
        sa.Column("platform_id", sa.String(20), nullable=False),
        sa.Column("feed_id", sa.String(26), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("retired_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_catalog_nodes_parent", "catalog_nodes", ["owner", "parent_id"])
    op.create_index("ix_catalog_nodes_platform", "catalog_nodes", ["owner", "platform_id"])
    op.create_index("ix_catalog_nodes_device", "catalog_nodes", ["device_id"])
    op.create_table(
        "catalog_parts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(32), sa.ForeignKey("departments.code"), nullable=False),
        sa.Column("platform_id", sa.String(20), nullable=False),
        sa.Column("sn", sa.String(20), nullable=False),
        sa.Column("sum_num", sa.Integer(), nullable=False),
        sa.Column("body_sha1", sa.String(40), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("owner", "platform_id", "sn", "body_sha1", name="uq_catalog_parts"),
    )
    op.create_index("ix_catalog_parts_answer", "catalog_parts", ["owner", "platform_id", "sn"])
    op.create_table(
        "duplicate_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("group_key", sa.String(64), nullable=False, unique=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("authoritative_feed_id", sa.String(26), nullable=True),
        sa.Column("feed_ids", sa.JSON(), nullable=False),
        sa.Column("note", sa.String(1000), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=False),
        sa.Column("decided_department", sa.String(32), nullable=True),
        sa.Column("decided_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("duplicate_decisions")
    op.drop_index("ix_catalog_parts_answer", table_name="catalog_parts")
    op.drop_table("catalog_parts")
    for name in ("ix_catalog_nodes_device", "ix_catalog_nodes_platform", "ix_catalog_nodes_parent"):
        op.drop_index(name, table_name="catalog_nodes")
    op.drop_table("catalog_nodes")
    with op.batch_alter_table("feeds") as feeds:
        feeds.alter_column("lat", existing_type=sa.Float(), nullable=False)
        feeds.alter_column("lon", existing_type=sa.Float(), nullable=False)
