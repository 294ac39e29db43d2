from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from registry_api.dependencies import PrincipalDep, SessionDep, require_roles
from registry_api.identity import service
from registry_api.identity.principal import Principal
from schemas.identity import (
    DEPARTMENT_CODE_PATTERN,
    ApiKeyCreate,
    ApiKeyIssued,
    DepartmentCreate,
    DepartmentOut,
)

router = APIRouter(prefix="/v1/departments", tags=["identity"])

CityAdmin = Annotated[Principal, Depends(require_roles())]
DepartmentCode = Annotated[str, Path(pattern=DEPARTMENT_CODE_PATTERN)]


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
    code: DepartmentCode, payload: ApiKeyCreate, session: SessionDep, _: CityAdmin
) -> ApiKeyIssued:
    """Issue an API key for a department's user or system. The key is shown once."""
    return await service.issue_api_key(session, code, payload)
