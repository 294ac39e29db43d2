"""Departments, roles and API keys as clients see them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class DepartmentKind(StrEnum):
    public_security = "public_security"
    urban_management = "urban_management"
    transport = "transport"
    environment = "environment"
    other = "other"


class Role(StrEnum):
    city_admin = "city_admin"
    dept_admin = "dept_admin"
    requester = "requester"
    operator = "operator"
    auditor = "auditor"
    gateway = "gateway"


DEPARTMENT_CODE_PATTERN = r"^[a-z0-9][a-z0-9-]{1,31}$"


class DepartmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=DEPARTMENT_CODE_PATTERN, examples=["lz-psb"])
    name: str = Field(min_length=1, max_length=200)
    kind: DepartmentKind
    answer_deadline_days: int = Field(
        5, ge=1, le=30, description="Working days the owner has to answer a conditional request"
    )


class DepartmentOut(DepartmentCreate):
    created_at: datetime


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="Who or what holds the key")
    roles: list[Role] = Field(min_length=1, max_length=6)


class ApiKeyIssued(BaseModel):
    id: str
    department: str
    name: str
    roles: list[Role]
    key: str = Field(description="The bearer token. Shown once: only its hash is stored.")
    created_at: datetime
