"""API keys through their life: issued, listed, rotated (the old key kept for a grace period
the caller chooses), revoked. Every change is a link of the audit chain; a key's secret is
shown once, when it is made, and only its hash is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.audit.service import RegistryChange, record_registry_changes
from registry_api.db import rows_matched
from registry_api.errors import Conflict, Forbidden, NotFound, Unprocessable
from registry_api.identity.models import ApiKey, Department
from registry_api.identity.principal import Principal
from schemas.events import EventType, utcnow
from schemas.identity import (
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyOut,
    ApiKeyRevoke,
    ApiKeyRotate,
    ApiKeyRotated,
    ApiKeyState,
    Role,
)

API_KEY_PREFIX = "fgk"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_state(record: ApiKey, now: datetime) -> ApiKeyState:
    if record.revoked_at is not None:
        return ApiKeyState.revoked
    if record.expires_at is not None:
        return ApiKeyState.expired if record.expires_at <= now else ApiKeyState.rotating
    return ApiKeyState.active


def key_out(record: ApiKey, now: datetime) -> ApiKeyOut:
    return ApiKeyOut(
        id=record.id,
        department=record.department_code,
        name=record.name,
        roles=[Role(role) for role in record.roles],
        state=key_state(record, now),
        created_at=record.created_at,
        expires_at=record.expires_at,
        replaced_by=record.replaced_by,
        revoked_at=record.revoked_at,
        revoked_by=record.revoked_by,
        revoke_reason=record.revoke_reason,
    )


def require_key_admin(principal: Principal, department_code: str) -> None:
    """A department's keys are managed by its dept_admin (and the city admin)."""
    if not principal.administers(department_code):
        raise Forbidden(
            "managing a department's keys needs that department's dept_admin",
            code="role_required",
        )


async def _department(session: AsyncSession, code: str) -> Department:
    department = await session.get(Department, code)
    if department is None:
        raise NotFound(f"department {code!r} does not exist", code="unknown_department")
    return department


async def _new_key(
    session: AsyncSession, *, department_code: str, name: str, roles: list[str], now: datetime
) -> tuple[ApiKey, str]:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(
        id=key_id,
        department_code=department_code,
        name=name,
        roles=roles,
        secret_hash=hash_secret(secret),
        created_at=now,
        updated_at=now,
    )
    session.add(record)
    return record, f"{API_KEY_PREFIX}_{key_id}_{secret}"


def _issued(record: ApiKey, token: str) -> ApiKeyIssued:
    return ApiKeyIssued(
        id=record.id,
        department=record.department_code,
        name=record.name,
        roles=[Role(role) for role in record.roles],
        key=token,
        created_at=record.created_at,
    )


def _details(record: ApiKey, **more: object) -> dict[str, object]:
    return {"key_id": record.id, "name": record.name, "roles": list(record.roles), **more}


async def issue_api_key(
    session: AsyncSession, principal: Principal, department_code: str, payload: ApiKeyCreate
) -> ApiKeyIssued:
    await _department(session, department_code)
    now = utcnow()
    record, token = await _new_key(
        session,
        department_code=department_code,
        name=payload.name,
        roles=[role.value for role in payload.roles],
        now=now,
    )
    await session.flush()
    await record_registry_changes(
        session,
        [
            RegistryChange(
                EventType.API_KEY_ISSUED,
                principal.subject,
                department_code,
                "issued",
                _details(record),
            )
        ],
    )
    await session.commit()
    return _issued(record, token)


async def list_api_keys(
    session: AsyncSession, principal: Principal, department_code: str, *, limit: int
) -> list[ApiKeyOut]:
    require_key_admin(principal, department_code)
    await _department(session, department_code)
    rows = await session.scalars(
        select(ApiKey)
        .where(ApiKey.department_code == department_code)
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
        .limit(limit)
    )
    now = utcnow()
    return [key_out(record, now) for record in rows]


async def _department_key(
    session: AsyncSession, principal: Principal, department_code: str, key_id: str
) -> ApiKey:
    require_key_admin(principal, department_code)
    record = await session.get(ApiKey, key_id)
    if record is None or record.department_code != department_code:
        raise NotFound(f"department {department_code!r} has no key {key_id!r}", code="unknown_key")
    return record


async def rotate_api_key(
    session: AsyncSession,
    principal: Principal,
    department_code: str,
    key_id: str,
    body: ApiKeyRotate,
    *,
    max_grace_seconds: int,
) -> ApiKeyRotated:
    """A new key with the old one's name and roles, working at once; the old key works for
    ``grace_seconds`` more (so its holders can switch), then never again."""
    if body.grace_seconds > max_grace_seconds:
        raise Unprocessable(
            f"grace_seconds may be at most {max_grace_seconds}", code="grace_too_long"
        )
    old = await _department_key(session, principal, department_code, key_id)
    if Role.city_admin.value in old.roles and not principal.is_city_admin:
        raise Forbidden("only the city admin rotates a city_admin key", code="role_required")
    now = utcnow()
    if key_state(old, now) is not ApiKeyState.active:
        raise Conflict(
            f"the key is {key_state(old, now).value}: only an active key is rotated",
            code="key_not_active",
        )
    new, token = await _new_key(
        session, department_code=department_code, name=old.name, roles=list(old.roles), now=now
    )
    expires_at = now + timedelta(seconds=body.grace_seconds)
    claimed = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == old.id, ApiKey.revoked_at.is_(None), ApiKey.expires_at.is_(None))
        .values(expires_at=expires_at, replaced_by=new.id, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if rows_matched(claimed) != 1:
        await session.rollback()
        raise Conflict("another change of this key came first", code="key_not_active")
    await session.flush()
    await record_registry_changes(
        session,
        [
            RegistryChange(
                EventType.API_KEY_ROTATED,
                principal.subject,
                department_code,
                "rotated",
                _details(
                    old,
                    new_key_id=new.id,
                    grace_seconds=body.grace_seconds,
                    old_key_expires_at=expires_at.isoformat(),
                ),
            )
        ],
    )
    await session.commit()
    await session.refresh(old)
    return ApiKeyRotated(new_key=_issued(new, token), old_key=key_out(old, utcnow()))


async def revoke_api_key(
    session: AsyncSession,
    principal: Principal,
    department_code: str,
    key_id: str,
    body: ApiKeyRevoke,
) -> ApiKeyOut:
    record = await _department_key(session, principal, department_code, key_id)
    now = utcnow()
    claimed = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == record.id, ApiKey.revoked_at.is_(None))
        .values(
            revoked_at=now,
            revoked_by=principal.subject[:200],
            revoke_reason=body.reason,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if rows_matched(claimed) != 1:
        await session.rollback()
        raise Conflict("the key is already revoked", code="already_revoked")
    await record_registry_changes(
        session,
        [
            RegistryChange(
                EventType.API_KEY_REVOKED,
                principal.subject,
                department_code,
                "revoked",
                _details(record),
                reason=body.reason,
            )
        ],
    )
    await session.commit()
    await session.refresh(record)
    return key_out(record, now)
