"""What a grant holds open, for the departments on either side of it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select

from registry_api.access.models import Grant
from registry_api.access.visibility import may_see_grant
from registry_api.dependencies import PrincipalDep, SessionDep
from registry_api.enforcement.models import GrantSession
from registry_api.errors import NotFound
from schemas.enforcement import GrantSessionOut

router = APIRouter(prefix="/v1/grants", tags=["access"])

GrantId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]
MOST_SHOWN = 1000


def _session_out(row: GrantSession) -> GrantSessionOut:
    state = "set_aside" if row.set_aside_at else "cutting" if row.cut_reason else "open"
    return GrantSessionOut.model_validate(
        {
            "kind": row.kind,
            "server": row.server,
            "session_id": row.session_id,
            "protocol": row.protocol,
            "client_ip": row.client_ip,
            "opened_at": row.opened_at,
            "state": state,
            "cut_reason": row.cut_reason,
            "attempts": row.attempts,
            "last_error": row.last_error,
        }
    )


@router.get("/{grant_id}/sessions", response_model=list[GrantSessionOut])
async def grant_sessions(
    grant_id: GrantId, session: SessionDep, principal: PrincipalDep
) -> list[GrantSessionOut]:
    """The sessions a grant holds open (players on media servers, broker clients) and the state
    of their cut once the grant is revoked or ends: for the requester's department and the
    owner's dept_admin or auditor. Recorded from the media servers' hooks."""
    grant = await session.get(Grant, grant_id)
    if grant is None or not may_see_grant(principal, grant):
        raise NotFound(f"no grant {grant_id!r}", code="unknown_grant")
    rows = await session.scalars(
        select(GrantSession)
        .where(GrantSession.grant_id == grant_id)
        .order_by(GrantSession.opened_at, GrantSession.id)
        .limit(MOST_SHOWN)
    )
    return [_session_out(row) for row in rows]
