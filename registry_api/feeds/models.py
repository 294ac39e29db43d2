"""The feeds table: one row per camera channel or sensor (a SensorThings Thing).

Searchable parts (owner, kind, GB/T 28181 parts, sharing class, status, position, field of
view) are columns; nested catalog, sharing and datastream documents are JSON. Rows are never
deleted: retiring a feed sets ``retired_at``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from registry_api.db import Base, UtcDateTime


class JsonDocument(TypeDecorator[Any]):
    """JSON in a column: text encoded by orjson on SQLite (bulk imports write a lot of it),
    the ``json`` type on PostgreSQL. Python ``None`` is SQL NULL."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSON(none_as_null=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return orjson.dumps(value).decode()

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, str | bytes):
            return orjson.loads(value)
        return value


class Feed(Base):
    __tablename__ = "feeds"
    __table_args__ = (
        UniqueConstraint("owner", "code", name="uq_feeds_owner_code"),
        Index("ix_feeds_code", "code"),
        Index("ix_feeds_stream_url_key", "stream_url_key"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    code: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(ForeignKey("departments.code"))
    name: Mapped[str] = mapped_column(String(200))
    # None for an unplaced feed (a catalog channel without coordinates): found by every
    # non-spatial filter, absent from spatial answers and the map until someone places it.
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    altitude: Mapped[float | None] = mapped_column(Float, nullable=True)

    gb_region: Mapped[str | None] = mapped_column(String(8), nullable=True)
    gb_industry: Mapped[str | None] = mapped_column(String(2), nullable=True)
    gb_type: Mapped[str | None] = mapped_column(String(3), nullable=True)
    gb_network: Mapped[str | None] = mapped_column(String(1), nullable=True)

    fov_heading: Mapped[float | None] = mapped_column(Float, nullable=True)
    fov_angle: Mapped[float | None] = mapped_column(Float, nullable=True)
    fov_range_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    coverage: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument(), nullable=True)

    stream_protocol: Mapped[str] = mapped_column(String(16))
    stream_url: Mapped[str] = mapped_column(String(2048))
    stream_url_key: Mapped[str] = mapped_column(String(64))
    media_path: Mapped[str] = mapped_column(String(256))

    datastreams: Mapped[list[dict[str, Any]]] = mapped_column(JsonDocument())
    catalog: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument(), nullable=True)
    sharing_class: Mapped[str] = mapped_column(String(16))
    sharing: Mapped[dict[str, Any]] = mapped_column(JsonDocument())
    tags: Mapped[list[str]] = mapped_column(JsonDocument())

    status: Mapped[str] = mapped_column(String(8), default="unknown")
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    version: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


# The table for Core statements (bulk inserts, updates, searches): typed for mypy.
feeds_table = cast(Table, Feed.__table__)
