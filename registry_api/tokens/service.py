"""Retrieval tokens: short-lived EdDSA JWTs binding a user, a department, a grant and one feed.

The claims carry ``mediamtx_permissions`` so MediaMTX in ``authMethod: jwt`` can verify them
itself against our JWKS; our own hooks verify them locally with the cached public key. A
verified signature is remembered per token string, so a player that comes back with the same
token costs a dictionary lookup, while expiry and revocation are still checked every time.
"""

from __future__ import annotations

import base64
import secrets
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
from cryptography.exceptions import InvalidSignature

from registry_api.tokens import compact
from registry_api.tokens.keyring import KeyRing, SigningKey
from schemas.access import AccessAction
from schemas.events import utcnow

ALGORITHM = "EdDSA"
AUDIENCE = "feedgrid-media"
# Clock skew tolerated on not-before between the replica that signs and the one that checks.
NOT_BEFORE_LEEWAY_SECONDS = 5
VERIFIED_CACHE_SIZE = 50_000
REQUIRED_CLAIMS = ("exp", "nbf", "jti", "sub", "grant", "feed", "path")

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
    token: str  # the JWT
    compact: str | None  # the same binding in under 256 characters (see compact.py)
    claims: RetrievalClaims

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.claims.expires_at, UTC)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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
            token_id=secrets.token_bytes(8).hex(),
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
        return MintedToken(token, self._compact(claims, key), claims)

    @staticmethod
    def _compact(claims: RetrievalClaims, key: SigningKey) -> str | None:
        try:
            return compact.encode(
                compact.CompactClaims(
                    key_digest=key.digest,
                    not_before=claims.not_before,
                    expires_at=claims.expires_at,
                    actions=claims.actions,
                    token_id=claims.token_id,
                    grant_id=claims.grant_id,
                    feed_id=claims.feed_id,
                ),
                key.private_key,
            )
        except (ValueError, KeyError):
            return None  # ids that do not fit: the JWT alone

    def verify(
        self, token: str, *, now: float | None = None, check_time: bool = True
    ) -> RetrievalClaims:
        """Checks signature, issuer and audience (cached per token), then the time window."""
        claims = self._verified.get(token)
        if claims is None:
            if token.startswith(compact.PREFIX):
                claims = self._verify_compact(token)
            else:
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

    def _verify_compact(self, token: str) -> RetrievalClaims:
        try:
            decoded = compact.decode(token, self.keyring.public_key_by_digest)
        except compact.CompactTokenError as error:
            raise TokenRejected(error.code, str(error)) from None
        return RetrievalClaims(
            token_id=decoded.token_id,
            subject="",
            department="",
            grant_id=decoded.grant_id,
            feed_id=decoded.feed_id,
            actions=decoded.actions,
            media_path="",  # compact tokens name the feed, not its path
            not_before=decoded.not_before,
            expires_at=decoded.expires_at,
        )

    def _verify_signature(self, token: str) -> RetrievalClaims:
        """EdDSA JWT verification done directly (split, one Ed25519 check, claim checks):
        PyJWT's general path costs as much again as the signature itself, on the hooks' path."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected("token_malformed", "the retrieval token is not a JWT")
        try:
            header = orjson.loads(_b64decode(parts[0]))
            payload = orjson.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise TokenRejected("token_malformed", "the retrieval token is not a JWT") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise TokenRejected("token_malformed", "the retrieval token is not a JWT")
        if header.get("alg") != ALGORITHM:
            raise TokenRejected("token_invalid", "the token is not signed with EdDSA")
        kid = header.get("kid")
        public_key = self.keyring.public_key(kid) if isinstance(kid, str) else None
        if public_key is None:
            raise TokenRejected("token_unknown_key", "the token was not signed by a FeedGrid key")
        try:
            public_key.verify(signature, f"{parts[0]}.{parts[1]}".encode())
        except InvalidSignature:
            raise TokenRejected(
                "token_bad_signature", "the token signature does not verify"
            ) from None
        if payload.get("iss") != self.issuer:
            raise TokenRejected("token_invalid", "the token is from another issuer")
        audience = payload.get("aud")
        if audience != AUDIENCE and not (isinstance(audience, list) and AUDIENCE in audience):
            raise TokenRejected("token_invalid", "the token is for another audience")
        missing = [claim for claim in REQUIRED_CLAIMS if claim not in payload]
        if missing:
            raise TokenRejected("token_invalid", "the token lacks claims: " + ", ".join(missing))
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
