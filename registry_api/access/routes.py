from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Response, status

from registry_api.access import decisions, grants, inbox, requests
from registry_api.dependencies import PrincipalDep, RuntimeDep, SessionDep, require_roles
from registry_api.enforcement.credentials import with_broker_credentials
from registry_api.feeds.routes import json_response
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.principal import Principal
from registry_api.ratelimit import limit
from registry_api.runtime import Runtime
from schemas.access import (
    AccessRequestCreate,
    AccessRequestOut,
    GrantOut,
    OwnerDecision,
    RetrievalOut,
    RevokeGrant,
)
from schemas.identity import Role
from schemas.times import UtcTime

requests_router = APIRouter(prefix="/v1/access-requests", tags=["access"])
grants_router = APIRouter(prefix="/v1/grants", tags=["access"])


def feed_index(runtime: Runtime) -> FeedIndex | None:
    """The registry's in-memory feed index, which spatial selections search."""
    index = getattr(runtime, "feed_index", None)
    return index if isinstance(index, FeedIndex) else None


Requester = Annotated[Principal, Depends(require_roles(*requests.REQUESTING_ROLES))]
DeptAdmin = Annotated[Principal, Depends(require_roles(Role.dept_admin))]
RequestId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]
GrantId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]


@requests_router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AccessRequestOut,
    dependencies=[Depends(limit("requests"))],
)
async def request_access(
    payload: AccessRequestCreate, session: SessionDep, runtime: RuntimeDep, principal: Requester
) -> Response:
    """Ask for feeds by id or by a spatial selection. Each feed is answered at once: granted,
    pending (the owner decides by ``due_at``) or denied, always with a reason code."""
    created = await requests.create_access_request(
        session,
        settings=runtime.settings,
        index=feed_index(runtime),
        rules=runtime.access.sharing_rules,
        principal=principal,
        payload=payload,
        known=runtime.access.departments,
    )
    runtime.relay.notify()
    return json_response(created, status.HTTP_201_CREATED)


@requests_router.get("", response_model=list[AccessRequestOut])
async def list_access_requests(
    session: SessionDep,
    principal: PrincipalDep,
    status_filter: Annotated[
        Literal["pending", "granted", "denied", "review"] | None,
        Query(
            alias="status", description="Feeds in this state; review = emergency grants to review"
        ),
    ] = None,
    scope: Annotated[
        Literal["owner", "requester"] | None,
        Query(
            description="owner: requests for your department's feeds (the inbox); requester: "
            "your department's requests. Default: owner for dept_admin, else requester"
        ),
    ] = None,
    before: UtcTime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[AccessRequestOut]:
    """The owner's inbox (``?status=pending``) or the department's own requests."""
    as_owner = scope == "owner" or (scope is None and principal.has_any(Role.dept_admin))
    return await inbox.list_access_requests(
        session, principal, status=status_filter, as_owner=as_owner, before=before, limit=limit
    )


@requests_router.get("/{request_id}", response_model=AccessRequestOut)
async def get_access_request(
    request_id: RequestId, session: SessionDep, principal: PrincipalDep
) -> AccessRequestOut:
    """A request with its feeds: all of them for its department, an owner's own for the owner."""
    return await inbox.get_access_request(session, principal, request_id)


@requests_router.post("/{request_id}/approve", response_model=AccessRequestOut)
async def approve_access_request(
    request_id: RequestId,
    body: OwnerDecision,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: DeptAdmin,
) -> AccessRequestOut:
    """The owner grants pending feeds (all its own, or those listed); confirms emergency grants."""
    decided = await decisions.approve(session, principal, request_id, body)
    runtime.relay.notify()
    return decided


@requests_router.post("/{request_id}/deny", response_model=AccessRequestOut)
async def deny_access_request(
    request_id: RequestId,
    body: OwnerDecision,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: DeptAdmin,
) -> AccessRequestOut:
    """The owner refuses pending feeds; refusing an emergency grant on review revokes it."""
    decided = await decisions.deny(
        session, principal, request_id, body, runtime.access.grants.mark_revoked
    )
    runtime.relay.notify()
    return decided


@grants_router.get("", response_model=list[GrantOut])
async def list_grants(
    session: SessionDep,
    principal: PrincipalDep,
    scope: Annotated[Literal["owner", "requester"], Query()] = "requester",
    active: bool = True,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[GrantOut]:
    """Grants to your department (or, with scope=owner, on your department's feeds)."""
    return await grants.list_grants(
        session, principal, active_only=active, as_owner=scope == "owner", limit=limit
    )


@grants_router.get("/{grant_id}", response_model=GrantOut)
async def get_grant(grant_id: GrantId, session: SessionDep, principal: PrincipalDep) -> GrantOut:
    return await grants.get_grant(session, principal, grant_id)


@grants_router.post("/{grant_id}/revoke", response_model=GrantOut)
async def revoke_grant(
    grant_id: GrantId,
    body: RevokeGrant,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: PrincipalDep,
) -> GrantOut:
    """Ends a grant now: media servers refuse its tokens at their next check (under a second),
    and the sessions it holds open on media servers and the MQTT broker are cut."""
    revoked = await grants.revoke_grant(
        session, principal, grant_id, body.reason, runtime.access.grants.mark_revoked
    )
    runtime.relay.notify()
    return revoked


@grants_router.get("/{grant_id}/retrieval", response_model=RetrievalOut)
async def grant_retrieval(
    grant_id: GrantId, session: SessionDep, runtime: RuntimeDep, principal: Requester
) -> RetrievalOut:
    """Per feed: a short-lived signed token and ready URLs on the media gateway; for sensor
    feeds, broker credentials of their own (shown once) that end with the grant."""
    answer = await grants.retrieval(
        session, runtime.settings, runtime.access.tokens, principal, grant_id
    )
    return await with_broker_credentials(session, runtime.settings, runtime.enforcement, answer)
