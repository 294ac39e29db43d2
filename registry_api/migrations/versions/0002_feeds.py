"""feeds: cameras and sensors with geospatial and catalog metadata

Revision ID: 0002_feeds
Revises: 0001_core
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from registry_api.db import UtcDateTime

revision = "0002_feeds"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feeds",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(32), sa.ForeignKey("departments.code"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("altitude", sa.Float(), nullable=True),
        sa.Column("gb_region", sa.String(8), nullable=True),
        sa.Column("gb_industry", sa.String(2), nullable=True),
        sa.Column("gb_type", sa.String(3), nullable=True),
        sa.Column("gb_network", sa.String(1), nullable=True),
        sa.Column("fov_heading", sa.Float(), nullable=True),
        sa.Column("fov_angle", sa.Float(), nullable=True),
        sa.Column("fov_range_m", sa.Float(), nullable=True),
        sa.Column("coverage", sa.JSON(), nullable=True),
        sa.Column("stream_protocol", sa.String(16), nullable=False),
        sa.Column("stream_url", sa.String(2048), nullable=False),
        sa.Column("stream_url_key", sa.String(64), nullable=False),
        sa.Column("media_path", sa.String(256), nullable=False),
        sa.Column("datastreams", sa.JSON(), nullable=False),
        sa.Column("catalog", sa.JSON(), nullable=True),
        sa.Column("sharing_class", sa.String(16), nullable=False),
        sa.Column("sharing", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(40), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("retired_at", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("owner", "code", name="uq_feeds_owner_code"),
    )
    op.create_index("ix_feeds_code", "feeds", ["code"])
    op.create_index("ix_feeds_stream_url_key", "feeds", ["stream_url_key"])


def downgrade() -> None:
    op.drop_table("feeds")
