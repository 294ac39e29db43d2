"""JWTs from the city's identity provider, verified locally against its cached JWKS.

The provider is named by ``FEEDGRID_IDP_ISSUER`` and ``FEEDGRID_IDP_JWKS_URL``. Keys are fetched
once and kept for ``idp_jwks_cache_seconds``; a token with a key id we have not seen triggers
one refetch (at most every few seconds), which is how the provider's key rotation is followed.
A verified token is remembered until it expires, so repeated calls cost a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

from registry_api.identity.principal import Principal
from schemas.identity import Role
from schemas.settings import Settings, SettingsError, identity_provider_gaps

log = logging.getLogger("feedgrid.identity.idp")

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
REFETCH_MIN_SECONDS = 5.0
CACHE_LIMIT = 20_000


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class IdentityProviderTokens:
    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str,
        audience: str,
        department_claim: str,
        roles_claim: str,
        cache_seconds: float,
    ) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.audience = audience
        self.department_claim = department_claim
        self.roles_claim = roles_claim
        self.cache_seconds = cache_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._fetch_lock = asyncio.Lock()
        self._verified: dict[str, tuple[float, Principal]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityProviderTokens | None:
        gaps = identity_provider_gaps(settings)
        if gaps:  # settings built in code skip validation: still never start without audience
            raise SettingsError(f"invalid settings: {gaps}")
        if not (settings.idp_issuer and settings.idp_jwks_url and settings.idp_audience):
            return None
        return cls(
            issuer=settings.idp_issuer,
            jwks_url=settings.idp_jwks_url,
            audience=settings.idp_audience,
            department_claim=settings.idp_department_claim,
            roles_claim=settings.idp_roles_claim,
            cache_seconds=settings.idp_jwks_cache_seconds,
        )

    async def resolve(self, token: str) -> Principal | None:
        """The caller named by a valid provider token, or None."""
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return None
        key = await self._key(kid)
        if key is None:
            return None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name] if key.algorithm_name in ALLOWED_ALGORITHMS else [],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss", "sub", "aud"], "verify_aud": True},
                leeway=10,
            )
        except jwt.PyJWTError as error:
            log.info("identity-provider token refused: %s", error)
            return None
        principal = self._principal(claims)
        if principal is not None:
            if len(self._verified) > CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = (float(claims["exp"]), principal)
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal | None:
        raw_roles = claims.get(self.roles_claim, [])
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        if not isinstance(raw_roles, list):
            return None  # a roles claim of another shape (null, a number): not a valid identity
        known = {role.value for role in Role}
        roles = frozenset(
            Role(role) for role in raw_roles if isinstance(role, str) and role in known
        )
        department = claims.get(self.department_claim)
        if not isinstance(department, str) or not department:
            department = None
        if department is None and Role.city_admin not in roles:
            return None
        return Principal(subject=f"idp:{claims['sub']}", department=department, roles=roles)

    async def _key(self, kid: object) -> jwt.PyJWK | None:
        stale = time.monotonic() - self._fetched_at > self.cache_seconds
        if isinstance(kid, str) and kid in self._keys and not stale:
            return self._keys[kid]
        async with self._fetch_lock:
            recently = time.monotonic() - self._fetched_at < REFETCH_MIN_SECONDS
            if not recently or stale:
                await self._fetch()
        if isinstance(kid, str):
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                response = await http.get(self.jwks_url)
                response.raise_for_status()
            keys: dict[str, jwt.PyJWK] = {}
            for entry in response.json().get("keys", []):
                try:
                    key = jwt.PyJWK.from_dict(entry)
                except jwt.PyJWTError:
                    continue
                keys[str(entry.get("kid", ""))] = key
            self._keys = keys
        except (httpx.HTTPError, ValueError) as error:
            # Keep the keys we had: a provider outage must not log everyone out at once.
            log.warning(
                "cannot fetch the identity provider's JWKS from %s: %s", self.jwks_url, error
            )
        self._fetched_at = time.monotonic()
