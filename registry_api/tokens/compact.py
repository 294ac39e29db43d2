"""Compact retrieval tokens, for players and servers that cannot carry a JWT.

nginx-rtmp passes a play request's arguments to its ``on_play`` hook cut at 256 bytes, and a
retrieval JWT is several hundred. The compact form carries the same binding (key, time window,
actions, token id, grant, feed) in about 180 characters, signed with the same Ed25519 key:

    "fgr1." + base64url(version | key digest | nbf | exp | actions | jti | grant | feed | signature)

It names the feed but not its path or the user: the hook finds the feed by path and the
requester department from the grant. MediaMTX in ``authMethod: jwt`` needs the JWT instead.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "fgr1."
VERSION = 1
SIGNATURE_BYTES = 64
_HEADER = struct.Struct(
    ">B4sIIB8s16sB"
)  # version, key digest, nbf, exp, actions, jti, grant, feed length
ACTION_BITS = {"live": 1, "playback": 2, "snapshot": 4, "ptz": 8, "download": 16, "read": 32}


class CompactTokenError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CompactClaims:
    key_digest: bytes
    not_before: int
    expires_at: int
    actions: frozenset[str]
    token_id: str
    grant_id: str
    feed_id: str


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def action_bits(actions: Iterable[str]) -> int:
    bits = 0
    for action in actions:
        bits |= ACTION_BITS[action]
    return bits


def encode(claims: CompactClaims, private_key: Ed25519PrivateKey) -> str:
    """Raises ValueError when the grant id is not 32 hex digits or the feed id is too long."""
    feed = claims.feed_id.encode()
    if len(feed) > 64:
        raise ValueError("feed id too long for a compact token")
    payload = (
        _HEADER.pack(
            VERSION,
            claims.key_digest,
            claims.not_before,
            claims.expires_at,
            action_bits(claims.actions),
            bytes.fromhex(claims.token_id),
            bytes.fromhex(claims.grant_id),
            len(feed),
        )
        + feed
    )
    return PREFIX + _b64encode(payload + private_key.sign(payload))


def decode(token: str, public_key_for: Callable[[bytes], Ed25519PublicKey | None]) -> CompactClaims:
    """Checks the signature; the caller checks the time window."""
    try:
        raw = _b64decode(token.removeprefix(PREFIX))
    except (ValueError, TypeError):
        raise CompactTokenError("token_malformed", "the compact token is not base64url") from None
    if len(raw) < _HEADER.size + SIGNATURE_BYTES:
        raise CompactTokenError("token_malformed", "the compact token is too short")
    payload, signature = raw[:-SIGNATURE_BYTES], raw[-SIGNATURE_BYTES:]
    version, digest, not_before, expires_at, bits, jti, grant, feed_length = _HEADER.unpack_from(
        payload
    )
    if version != VERSION or len(payload) != _HEADER.size + feed_length:
        raise CompactTokenError("token_malformed", "unknown compact token layout")
    public_key = public_key_for(digest)
    if public_key is None:
        raise CompactTokenError("token_unknown_key", "the token was not signed by a FeedGrid key")
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise CompactTokenError(
            "token_bad_signature", "the token signature does not verify"
        ) from None
    try:
        feed_id = payload[_HEADER.size :].decode()
    except UnicodeDecodeError:
        raise CompactTokenError("token_malformed", "the feed id is not text") from None
    return CompactClaims(
        key_digest=digest,
        not_before=not_before,
        expires_at=expires_at,
        actions=frozenset(name for name, bit in ACTION_BITS.items() if bits & bit),
        token_id=jti.hex(),
        grant_id=grant.hex(),
        feed_id=feed_id,
    )
