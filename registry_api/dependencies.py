"""Request dependencies: the runtime, a DB session, and the caller's checked identity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.errors import Forbidden, Unauthorized
from registry_api.identity.principal import Principal
from registry_api.runtime import Runtime
from schemas.identity import Role

_bearer = HTTPBearer(auto_error=False, description="API key or city identity-provider JWT")

CITY_ADMIN = Principal(subject="city-admin", department=None, roles=frozenset({Role.city_admin}))


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_principal(
    runtime: RuntimeDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "a bearer token is required",
            code="missing_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = credentials.credentials
    admin_token = runtime.settings.admin_token
    if admin_token and _constant_time_equal(token, admin_token):
        return CITY_ADMIN
    principal = await runtime.api_keys.resolve(session, token)
    if principal is None:
        raise Unauthorized(
            "the bearer token is not valid",
            code="invalid_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def _constant_time_equal(left: str, right: str) -> bool:
    import hmac

    return hmac.compare_digest(left.encode(), right.encode())


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that lets through the city admin and any holder of one of ``roles``."""

    async def _check(principal: PrincipalDep) -> Principal:
        if not principal.has_any(*roles):
            wanted = ", ".join(role.value for role in roles) or "city_admin"
            raise Forbidden(f"this needs one of the roles: {wanted}", code="role_required")
        return principal

    return _check
