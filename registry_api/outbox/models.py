from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from registry_api.db import Base, UtcDateTime


class OutboxMessage(Base):
    """An event (or a bundle of a batch's events) committed with the change it describes,
    waiting for the relay."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    topic: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(128))
    # 1: the payload is one message under ``key``; more: a bundle (registry_api.outbox.service)
    messages: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # None: the payload as it is; "zstd": a bundle's frames compressed (outbox.service)
    codec: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True, index=True)
    # Last, as SQLite stores it (migration 0009): a bundle's payload spills into overflow pages,
    # and a column after it is read only by walking them.
    payload: Mapped[bytes] = mapped_column(LargeBinary)
