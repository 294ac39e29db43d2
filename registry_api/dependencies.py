"""Request dependencies: the runtime, a DB session, and the caller's checked identity."""

from __future__ import annotations

import hmac
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
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller. No session of its own: a key resolved lately costs nothing, and a lookup
    opens one only then (a page of feeds needs no database at all). The runtime is read from
    the request, not through ``RuntimeDep``: every dependency FastAPI solves costs about ten
    microseconds, and every route asks who calls."""
    runtime: Runtime = request.app.state.runtime
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "a bearer token is required",
            code="missing_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = await resolve_principal(runtime, credentials.credentials)
    if principal is None:
        raise Unauthorized(
            "the bearer token is not valid",
            code="invalid_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


async def resolve_principal(
    runtime: Runtime, token: str, *, session: AsyncSession | None = None
) -> Principal | None:
    """Who a bearer token names: the city admin (the bootstrap token), an API key's holder or
    an identity-provider user; None for nobody. The one resolver behind every route and every
    media-server hook. A token resolved lately costs no query; otherwise ``session`` is used,
    or a session of its own (the hooks hold none on their fast path)."""
    admin_token = runtime.settings.admin_token
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return CITY_ADMIN
    principal = runtime.api_keys.cached(token)
    if principal is not None:
        return principal
    if session is not None:
        return await runtime.api_keys.resolve(session, token)
    async with runtime.sessions() as own_session:
        return await runtime.api_keys.resolve(own_session, token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that lets through the city admin and any holder of one of ``roles``."""

    async def _check(principal: PrincipalDep) -> Principal:
        if not principal.has_any(*roles):
            wanted = ", ".join(role.value for role in roles) or "city_admin"
            raise Forbidden(f"this needs one of the roles: {wanted}", code="role_required")
        return principal

    return _check
