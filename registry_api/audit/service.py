"""Recording access events: an audit-chain link and a Kafka event each, in the caller's transaction.

Every decision, approval, revocation and retrieval goes through :func:`record_access_events`,
so the audit log in the registry database and the ``access-events`` topic always hold the same
events with the same ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.audit.chain import ChainLink, ChainVerifier, extend_chain
from registry_api.audit.models import HASHED_COLUMNS, AuditChainHead, AuditEntry
from registry_api.outbox.service import enqueue_many
from schemas.access import AuditEntryOut, AuditPage, AuditVerification
from schemas.events import SCHEMA_ACCESS_EVENT_V1, AccessEventData, CloudEvent, utcnow
from schemas.topics import ACCESS_EVENTS

ACCESS_REQUESTED = "feedgrid.access.requested"
ACCESS_DECIDED = "feedgrid.access.decided"
GRANT_ISSUED = "feedgrid.grant.issued"
GRANT_REVOKED = "feedgrid.grant.revoked"
RETRIEVAL_STARTED = "feedgrid.retrieval.started"
RETRIEVAL_ENDED = "feedgrid.retrieval.ended"
RETRIEVAL_DENIED = "feedgrid.retrieval.denied"

CHAIN_HEAD_ID = 1
VERIFY_BATCH = 5_000


@dataclass(frozen=True)
class AccessEvent:
    """Something to record: it becomes an audit link and a CloudEvent with the same id."""

    event_type: str
    data: AccessEventData
    actor: str | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    occurred_at: datetime = field(default_factory=utcnow)

    def audit_fields(self) -> dict[str, Any]:
        payload = self.data.model_dump(mode="json")
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "occurred_at": self.occurred_at,
            "actor": self.actor,
            "feed_id": self.data.feed_id,
            "request_id": self.data.request_id,
            "grant_id": self.data.grant_id,
            "requester_department": self.data.requester_department,
            "owner_department": self.data.owner_department,
            "decision": self.data.decision,
            "reason": self.data.reason,
            "data": payload,
        }

    def cloud_event(self, payload: dict[str, Any]) -> CloudEvent:
        return CloudEvent(
            id=self.event_id,
            type=self.event_type,
            time=self.occurred_at,
            subject=self.data.feed_id,
            dataschema=SCHEMA_ACCESS_EVENT_V1,
            data=payload,
        )


async def record_access_events(session: AsyncSession, events: Sequence[AccessEvent]) -> None:
    """Appends the events to the audit chain and the outbox. The caller commits.

    Call it last before the commit: on PostgreSQL it holds the chain-head row lock until then.
    """
    if not events:
        return
    now = utcnow()
    # Taking the head with an UPDATE locks it (a row lock on PostgreSQL, the write lock on
    # SQLite) before reading it, so concurrent appends, in this process or another, queue up.
    head = (
        await session.execute(
            update(AuditChainHead)
            .where(AuditChainHead.id == CHAIN_HEAD_ID)
            .values(updated_at=now)
            .returning(AuditChainHead.last_seq, AuditChainHead.last_hash)
        )
    ).one()
    fields = [event.audit_fields() for event in events]
    rows = extend_chain(head.last_hash, head.last_seq, fields)
    await session.execute(insert(AuditEntry), rows)
    await session.execute(
        update(AuditChainHead)
        .where(AuditChainHead.id == CHAIN_HEAD_ID)
        .values(last_seq=rows[-1]["seq"], last_hash=rows[-1]["entry_hash"])
    )
    await enqueue_many(
        session,
        [
            (ACCESS_EVENTS, event.data.feed_id, event.cloud_event(row["data"]))
            for event, row in zip(events, rows, strict=True)
        ],
    )


@dataclass(frozen=True)
class AuditFilters:
    event_type: str | None = None
    feed_id: str | None = None
    grant_id: str | None = None
    request_id: str | None = None
    department: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_seq: int = 0
    limit: int = 100


async def list_entries(
    session: AsyncSession, filters: AuditFilters, *, visible_to_department: str | None
) -> AuditPage:
    """Entries in chain order; ``visible_to_department`` limits them to that department's events."""
    query: Select[tuple[AuditEntry]] = (
        select(AuditEntry).where(AuditEntry.seq > filters.after_seq).order_by(AuditEntry.seq)
    )
    for column, value in (
        (AuditEntry.event_type, filters.event_type),
        (AuditEntry.feed_id, filters.feed_id),
        (AuditEntry.grant_id, filters.grant_id),
        (AuditEntry.request_id, filters.request_id),
    ):
        if value is not None:
            query = query.where(column == value)
    for department in (filters.department, visible_to_department):
        if department is not None:
            query = query.where(
                or_(
                    AuditEntry.requester_department == department,
                    AuditEntry.owner_department == department,
                )
            )
    if filters.since is not None:
        query = query.where(AuditEntry.occurred_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEntry.occurred_at < filters.until)
    rows = list((await session.scalars(query.limit(filters.limit + 1))).all())
    more = len(rows) > filters.limit
    rows = rows[: filters.limit]
    return AuditPage(
        entries=[AuditEntryOut.model_validate(row, from_attributes=True) for row in rows],
        next_after_seq=rows[-1].seq if more and rows else None,
    )


def _link(row: AuditEntry) -> ChainLink:
    return ChainLink(
        seq=row.seq,
        previous_hash=row.previous_hash,
        entry_hash=row.entry_hash,
        fields={column: getattr(row, column) for column in HASHED_COLUMNS},
    )


async def verify_chain(session: AsyncSession) -> AuditVerification:
    """Recomputes every link from the first; reports the first one that does not hold."""
    verifier = ChainVerifier()
    after = 0
    broken = None
    while broken is None:
        rows = list(
            (
                await session.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.seq > after)
                    .order_by(AuditEntry.seq)
                    .limit(VERIFY_BATCH)
                )
            ).all()
        )
        if not rows:
            break
        for row in rows:
            broken = verifier.check(_link(row))
            if broken is not None:
                break
        after = rows[-1].seq
        session.expunge_all()
    if broken is None:
        head = await session.get(AuditChainHead, CHAIN_HEAD_ID)
        if head is not None:
            broken = verifier.finish(head.last_seq, head.last_hash)
    if broken is not None:
        return AuditVerification(
            ok=False,
            entries_checked=verifier.checked,
            last_seq=verifier.previous_seq or None,
            first_broken_seq=broken.seq,
            problem=broken.problem,
            message=broken.message,
        )
    return AuditVerification(
        ok=True,
        entries_checked=verifier.checked,
        last_seq=verifier.previous_seq or None,
        message=f"all {verifier.checked} entries link up to the chain head",
    )
