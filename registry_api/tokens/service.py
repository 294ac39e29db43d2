"""Retrieval tokens: short-lived EdDSA JWTs binding a user, a department, a grant and one feed.

The claims carry ``mediamtx_permissions`` so MediaMTX in ``authMethod: jwt`` can verify them
itself against our JWKS; our own hooks verify them locally with the cached public key. A
verified signature is remembered per token string, so a player that comes back with the same
token costs a dictionary lookup, while expiry and revocation are still checked every time.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from registry_api.tokens.keyring import KeyRing
from schemas.access import AccessAction
from schemas.events import utcnow

ALGORITHM = "EdDSA"
AUDIENCE = "feedgrid-media"
# Clock skew tolerated on not-before between the replica that signs and the one that checks.
NOT_BEFORE_LEEWAY_SECONDS = 5
VERIFIED_CACHE_SIZE = 50_000

# Which MediaMTX action each FeedGrid action opens.
MEDIAMTX_ACTIONS: dict[str, str] = {
    AccessAction.live: "read",
    AccessAction.playback: "playback",
}


class TokenRejected(Exception):
    """The token cannot be used; ``code`` says why (machine-readable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RetrievalClaims:
    token_id: str
    subject: str
    department: str
    grant_id: str
    feed_id: str
    actions: frozenset[str]
    media_path: str
    not_before: int
    expires_at: int

    def allows(self, action: str) -> bool:
        return action in self.actions


@dataclass(frozen=True)
class MintedToken:
    token: str
    claims: RetrievalClaims

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.claims.expires_at, UTC)


def mediamtx_permissions(actions: Iterable[str], media_path: str) -> list[dict[str, str]]:
    mapped = sorted({MEDIAMTX_ACTIONS[action] for action in actions if action in MEDIAMTX_ACTIONS})
    return [{"action": action, "path": media_path} for action in mapped]


class RetrievalTokens:
    def __init__(self, keyring: KeyRing, *, issuer: str, ttl: timedelta) -> None:
        self.keyring = keyring
        self.issuer = issuer
        self.ttl = ttl
        self._verified: OrderedDict[str, RetrievalClaims] = OrderedDict()

    def mint(
        self,
        *,
        subject: str,
        department: str,
        grant_id: str,
        feed_id: str,
        actions: Iterable[str],
        media_path: str,
        grant_valid_from: datetime,
        grant_valid_until: datetime,
        now: datetime | None = None,
    ) -> MintedToken:
        """A token valid from max(now, grant start) for the TTL, never past the grant's end."""
        now = now or utcnow()
        not_before = max(now, grant_valid_from)
        expires = min(not_before + self.ttl, grant_valid_until)
        if expires <= now:
            raise TokenRejected("grant_expired", "the grant has ended; no token can be issued")
        action_list = sorted(str(action) for action in actions)
        claims = RetrievalClaims(
            token_id=secrets.token_urlsafe(12),
            subject=subject,
            department=department,
            grant_id=grant_id,
            feed_id=feed_id,
            actions=frozenset(action_list),
            media_path=media_path,
            not_before=int(not_before.timestamp()),
            expires_at=int(expires.timestamp()),
        )
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "dept": department,
            "grant": grant_id,
            "feed": feed_id,
            "actions": action_list,
            "path": media_path,
            "iat": int(now.timestamp()),
            "nbf": claims.not_before,
            "exp": claims.expires_at,
            "jti": claims.token_id,
            "mediamtx_permissions": mediamtx_permissions(action_list, media_path),
        }
        key = self.keyring.signing_key()
        token = jwt.encode(payload, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
        return MintedToken(token, claims)

    def verify(
        self, token: str, *, now: float | None = None, check_time: bool = True
    ) -> RetrievalClaims:
        """Checks signature, issuer and audience (cached per token), then the time window."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        if check_time:
            moment = utcnow().timestamp() if now is None else now
            if moment >= claims.expires_at:
                raise TokenRejected("token_expired", "the retrieval token has expired")
            if moment + NOT_BEFORE_LEEWAY_SECONDS < claims.not_before:
                raise TokenRejected("token_not_yet_valid", "the retrieval token is not valid yet")
        return claims

    def _verify_signature(self, token: str) -> RetrievalClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("token_malformed", "the retrieval token is not a JWT") from None
        kid = header.get("kid")
        public_key = self.keyring.public_key(kid) if isinstance(kid, str) else None
        if public_key is None:
            raise TokenRejected("token_unknown_key", "the token was not signed by a FeedGrid key")
        try:
            payload = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self.issuer,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "nbf", "jti", "sub", "grant", "feed", "path"],
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenRejected(
                "token_bad_signature", "the token signature does not verify"
            ) from None
        except jwt.PyJWTError as error:
            raise TokenRejected("token_invalid", f"the token is not acceptable: {error}") from None
        try:
            return RetrievalClaims(
                token_id=str(payload["jti"]),
                subject=str(payload["sub"]),
                department=str(payload.get("dept", "")),
                grant_id=str(payload["grant"]),
                feed_id=str(payload["feed"]),
                actions=frozenset(str(action) for action in payload.get("actions", [])),
                media_path=str(payload["path"]),
                not_before=int(payload["nbf"]),
                expires_at=int(payload["exp"]),
            )
        except (TypeError, ValueError):
            raise TokenRejected("token_invalid", "the token claims have the wrong types") from None
