from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from registry_api.db import Base, UtcDateTime


class AuditEntry(Base):
    """One link of the audit hash chain: an access decision, approval, revocation or retrieval.

    Every column but ``entry_hash`` goes into the hash, so any edit of a stored row shows.
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    feed_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    request_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    grant_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    requester_department: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    owner_department: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    previous_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The newest link, updated with every append: where removal of the newest rows shows.

    Appends lock this single row, which orders them across every API replica.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    last_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


HASHED_COLUMNS = (
    "seq",
    "event_id",
    "event_type",
    "occurred_at",
    "actor",
    "feed_id",
    "request_id",
    "grant_id",
    "requester_department",
    "owner_department",
    "decision",
    "reason",
    "data",
    "previous_hash",
)
