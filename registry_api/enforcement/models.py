from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry_api.db import Base, UtcDateTime


class GrantSession(Base):
    """A session a grant holds open: a player a media server let in (recorded from its play
    hook, forgotten on its stop hook) or a broker client a sensor retrieval created.

    The row is the durable record of what must be cut: a revocation or the grant's end makes
    every row of the grant due, whatever process restarts in between. A cut under way holds a
    lease in ``next_attempt_at``; failures push it back with backoff until ``attempts`` reaches
    the bound, and then the row is set aside with ``last_error``."""

    __tablename__ = "grant_sessions"
    __table_args__ = (
        UniqueConstraint("kind", "server", "session_id", name="uq_grant_sessions_server_session"),
        Index("ix_grant_sessions_grant_ends_at", "grant_ends_at"),
        Index("ix_grant_sessions_next_attempt_at", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id"), index=True)
    grant_ends_at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(16))  # nginx-rtmp | zlmediakit | mediamtx | mqtt
    server: Mapped[str] = mapped_column(String(200))
    session_id: Mapped[str] = mapped_column(String(200))
    app: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stream: Mapped[str | None] = mapped_column(String(300), nullable=True)
    protocol: Mapped[str | None] = mapped_column(String(16), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    cut_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    set_aside_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
