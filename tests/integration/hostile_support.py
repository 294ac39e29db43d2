"""What "nothing changed" means for the hostile-input tests: every registry row, read directly.

A refused request must leave the registry exactly as it was: no department, key, feed, request
or grant added or altered, and no audit entry except the ``retrieval.denied`` decisions the
media-server hooks record on purpose for each refused attempt.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from registry_api.audit.models import AuditEntry
from registry_api.db import Base
from registry_api.models_index import import_all_models
from registry_api.runtime import Runtime
from schemas.events import EventType

REGISTRY_TABLES = (
    "departments",
    "api_keys",
    "feeds",
    "access_requests",
    "access_request_feeds",
    "grants",
    "grant_feeds",
    "webhook_subscriptions",
    "webhook_deliveries",
)

import_all_models()


async def registry_state(
    runtime: Runtime, ignored_events: tuple[str, ...] = (EventType.RETRIEVAL_DENIED,)
) -> dict[str, list[Any]]:
    """Every row of the registry's tables, and the audit log without ``ignored_events``."""
    # Hook decisions are written in batches: flush them so a wrongly allowed one shows.
    await runtime.access.hook_events.flush()
    state: dict[str, list[Any]] = {}
    async with runtime.sessions() as session:
        for name in REGISTRY_TABLES:
            rows = (await session.execute(select(Base.metadata.tables[name]))).all()
            state[name] = sorted((tuple(row) for row in rows), key=repr)
        audited = await session.execute(
            select(AuditEntry.seq, AuditEntry.event_type, AuditEntry.feed_id)
            .where(AuditEntry.event_type.not_in(ignored_events))
            .order_by(AuditEntry.seq)
        )
        state["audit_log"] = [tuple(row) for row in audited.all()]
    return state


def changed_tables(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> list[str]:
    """The names of the tables whose rows differ (an empty list when nothing changed)."""
    return [name for name in before if before[name] != after.get(name)]
