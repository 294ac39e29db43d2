from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status

from registry_api.dependencies import PrincipalDep, RuntimeDep, SessionDep, require_roles
from registry_api.identity import keys, service
from registry_api.identity.principal import Principal
from schemas.identity import (
    DEPARTMENT_CODE_PATTERN,
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyOut,
    ApiKeyRevoke,
    ApiKeyRotate,
    ApiKeyRotated,
    DepartmentCreate,
    DepartmentOut,
)

router = APIRouter(prefix="/v1/departments", tags=["identity"])

CityAdmin = Annotated[Principal, Depends(require_roles())]
DepartmentCode = Annotated[str, Path(pattern=DEPARTMENT_CODE_PATTERN)]
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="The key's id")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DepartmentOut)
async def create_department(payload: DepartmentCreate, session: SessionDep, _: CityAdmin) -> object:
    """Register a department (city admin only)."""
    return await service.create_department(session, payload)


@router.get("", response_model=list[DepartmentOut])
async def list_departments(session: SessionDep, _: PrincipalDep) -> object:
    """Every department of the city."""
    return await service.list_departments(session)


@router.post("/{code}/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyIssued)
async def issue_api_key(
    code: DepartmentCode, payload: ApiKeyCreate, session: SessionDep, admin: CityAdmin
) -> ApiKeyIssued:
    """Issue an API key for a department's user or system. The key is shown once. Audited."""
    return await keys.issue_api_key(session, admin, code, payload)


@router.get("/{code}/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(
    code: DepartmentCode,
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[ApiKeyOut]:
    """The department's keys, newest first, with their state (active, rotating, expired,
    revoked); never a secret. For the department's dept_admin and the city admin."""
    return await keys.list_api_keys(session, principal, code, limit=limit)


@router.post("/{code}/api-keys/{key_id}/rotate", response_model=ApiKeyRotated)
async def rotate_api_key(
    code: DepartmentCode,
    key_id: KeyId,
    body: ApiKeyRotate,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: PrincipalDep,
) -> ApiKeyRotated:
    """Replace a key: the new key (shown once) works at once, with the same name and roles;
    the old one works for ``grace_seconds`` more, then is refused everywhere. Audited."""
    rotated = await keys.rotate_api_key(
        session,
        principal,
        code,
        key_id,
        body,
        max_grace_seconds=runtime.settings.api_key_max_grace_seconds,
    )
    runtime.api_keys.forget(key_id)
    return rotated


@router.post("/{code}/api-keys/{key_id}/revoke", response_model=ApiKeyOut)
async def revoke_api_key(
    code: DepartmentCode,
    key_id: KeyId,
    body: ApiKeyRevoke,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: PrincipalDep,
) -> ApiKeyOut:
    """Revoke a key: refused everywhere (every API replica, every media-server hook) within
    a second. Audited."""
    revoked = await keys.revoke_api_key(session, principal, code, key_id, body)
    runtime.api_keys.forget(key_id)
    return revoked
