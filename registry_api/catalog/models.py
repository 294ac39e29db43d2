"""Tables of the catalog: the nodes a platform reported, answers still arriving in parts, and
decisions on suspected duplicates."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry_api.db import Base, UtcDateTime


class CatalogNode(Base):
    """One item of a department's platform catalog: a platform, business group, virtual
    organisation, device or channel (channels point at their feed). Never deleted: an item a
    complete catalog no longer lists is retired, and comes back when it reappears."""

    __tablename__ = "catalog_nodes"
    __table_args__ = (
        Index("ix_catalog_nodes_parent", "owner", "parent_id"),
        Index("ix_catalog_nodes_platform", "owner", "platform_id"),
        Index("ix_catalog_nodes_device", "device_id"),
    )

    owner: Mapped[str] = mapped_column(ForeignKey("departments.code"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[str | None] = mapped_column(String(20), nullable=True)
    platform_id: Mapped[str] = mapped_column(String(20))
    feed_id: Mapped[str | None] = mapped_column(String(26), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class CatalogPart(Base):
    """One message of a catalog answer that is not complete yet (same SN, short of SumNum)."""

    __tablename__ = "catalog_parts"
    __table_args__ = (
        UniqueConstraint("owner", "platform_id", "sn", "body_sha1", name="uq_catalog_parts"),
        Index("ix_catalog_parts_answer", "owner", "platform_id", "sn"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(ForeignKey("departments.code"))
    platform_id: Mapped[str] = mapped_column(String(20))
    sn: Mapped[str] = mapped_column(String(20))
    sum_num: Mapped[int] = mapped_column(Integer)
    body_sha1: Mapped[str] = mapped_column(String(40))
    item_count: Mapped[int] = mapped_column(Integer)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DuplicateDecision(Base):
    """An owner's or the city admin's answer to a group of suspected duplicates: written once,
    never changed (the audit trail of who decided what, when and why)."""

    __tablename__ = "duplicate_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_key: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))  # resolved | dismissed
    authoritative_feed_id: Mapped[str | None] = mapped_column(String(26), nullable=True)
    feed_ids: Mapped[list[str]] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    decided_by: Mapped[str] = mapped_column(String(200))
    decided_department: Mapped[str | None] = mapped_column(String(32), nullable=True)
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime())


catalog_nodes_table = cast(Table, CatalogNode.__table__)
catalog_parts_table = cast(Table, CatalogPart.__table__)
