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


class ApiKeyState(StrEnum):
    active = "active"
    rotating = "rotating"  # replaced by a newer key; works until its grace period ends
    expired = "expired"  # its grace period ended
    revoked = "revoked"


class ApiKeyOut(BaseModel):
    """A key as its department's admin sees it: never its secret, nor the secret's hash."""

    id: str
    department: str
    name: str
    roles: list[Role]
    state: ApiKeyState
    created_at: datetime
    expires_at: datetime | None = Field(
        None, description="A rotated key works until then (its grace period)"
    )
    replaced_by: str | None = Field(None, description="The key that replaced it by rotation")
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None


class ApiKeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        3600,
        ge=0,
        le=90 * 86_400,
        description="How long the old key keeps working (0: not at all). At most "
        "FEEDGRID_API_KEY_MAX_GRACE_SECONDS (7 days by default).",
    )


class ApiKeyRotated(BaseModel):
    new_key: ApiKeyIssued = Field(description="The replacement; its key is shown once")
    old_key: ApiKeyOut


class ApiKeyRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=200)
