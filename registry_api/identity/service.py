"""Departments and API keys: plain functions over a session."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.errors import Conflict, NotFound
from registry_api.identity.idp import IdentityProviderTokens, looks_like_jwt
from registry_api.identity.models import ApiKey, Department
from registry_api.identity.principal import Principal
from schemas.events import utcnow
from schemas.identity import ApiKeyCreate, ApiKeyIssued, DepartmentCreate, Role

API_KEY_PREFIX = "fgk"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


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


async def issue_api_key(
    session: AsyncSession, department_code: str, payload: ApiKeyCreate
) -> ApiKeyIssued:
    await get_department(session, department_code)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(
        id=key_id,
        department_code=department_code,
        name=payload.name,
        roles=[role.value for role in payload.roles],
        secret_hash=hash_secret(secret),
        created_at=utcnow(),
    )
    session.add(record)
    await session.commit()
    return ApiKeyIssued(
        id=key_id,
        department=department_code,
        name=payload.name,
        roles=payload.roles,
        key=f"{API_KEY_PREFIX}_{key_id}_{secret}",
        created_at=record.created_at,
    )


class ApiKeyResolver:
    """Turns a bearer token into a principal: an API key, or a JWT from the city's identity
    provider when one is configured. Caches hits briefly so hooks stay fast."""

    def __init__(
        self, ttl_seconds: float = 5.0, identity_provider: IdentityProviderTokens | None = None
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.identity_provider = identity_provider
        self._cache: dict[str, tuple[float, Principal]] = {}

    def cached(self, token: str) -> Principal | None:
        """The principal of a token resolved in the last few seconds, without any I/O."""
        cached = self._cache.get(token)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        return None

    async def resolve(self, session: AsyncSession, token: str) -> Principal | None:
        cached = self._cache.get(token)
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        if self.identity_provider is not None and looks_like_jwt(token):
            return await self.identity_provider.resolve(token)
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
            return None
        record = await session.get(ApiKey, parts[1])
        if record is None or record.revoked_at is not None:
            return None
        if not hmac.compare_digest(record.secret_hash, hash_secret(parts[2])):
            return None
        principal = Principal(
            subject=f"key:{record.id}:{record.name}",
            department=record.department_code,
            roles=frozenset(Role(role) for role in record.roles),
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (now + self.ttl_seconds, principal)
        return principal

    def forget(self) -> None:
        self._cache.clear()
