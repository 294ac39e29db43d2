"""Departments: plain functions over a session (their API keys: identity/keys.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.errors import Conflict, NotFound
from registry_api.identity.models import Department
from schemas.events import utcnow
from schemas.identity import DepartmentCreate


async def create_department(session: AsyncSession, payload: DepartmentCreate) -> Department:
    if await session.get(Department, payload.code) is not None:
        raise Conflict(f"department {payload.code!r} already exists", code="department_exists")
    department = Department(**payload.model_dump(mode="json"), created_at=utcnow())
    session.add(department)
    await session.commit()
    return department


async def list_departments(session: AsyncSession) -> list[Department]:
    return list((await session.scalars(select(Department).order_by(Department.code))).all())


async def get_department(session: AsyncSession, code: str) -> Department:
    department = await session.get(Department, code)
    if department is None:
        raise NotFound(f"department {code!r} does not exist", code="unknown_department")
    return department
