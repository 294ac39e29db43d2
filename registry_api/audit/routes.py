from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from registry_api.audit import service
from registry_api.dependencies import SessionDep, require_roles
from registry_api.identity.principal import Principal
from schemas.access import AuditPage, AuditVerification
from schemas.identity import Role
from schemas.numbers import INT64_MAX
from schemas.times import UtcTime

router = APIRouter(prefix="/v1/audit", tags=["audit"])

Auditor = Annotated[Principal, Depends(require_roles(Role.auditor))]


@router.get("", response_model=AuditPage)
async def list_audit_entries(
    session: SessionDep,
    auditor: Auditor,
    event_type: Annotated[str | None, Query(max_length=64)] = None,
    feed_id: Annotated[str | None, Query(max_length=64)] = None,
    grant_id: Annotated[str | None, Query(max_length=32)] = None,
    request_id: Annotated[str | None, Query(max_length=32)] = None,
    department: Annotated[
        str | None, Query(max_length=32, description="Requester or owner department")
    ] = None,
    since: UtcTime | None = None,
    until: UtcTime | None = None,
    after_seq: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """The audit log in chain order. A department's auditor sees the events of its department
    (as requester or owner); the city admin sees all."""
    filters = service.AuditFilters(
        event_type=event_type,
        feed_id=feed_id,
        grant_id=grant_id,
        request_id=request_id,
        department=department,
        since=since,
        until=until,
        after_seq=after_seq,
        limit=limit,
    )
    visible = None if auditor.is_city_admin else auditor.department
    return await service.list_entries(session, filters, visible_to_department=visible)


@router.get("/verify", response_model=AuditVerification)
async def verify_audit_chain(session: SessionDep, _: Auditor) -> AuditVerification:
    """Recomputes the hash chain; reports the first altered, missing or truncated entry."""
    return await service.verify_chain(session)
