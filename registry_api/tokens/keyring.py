"""The Ed25519 key ring that signs retrieval tokens.

Keys live as PKCS#8 PEM files in ``settings.signing_key_dir`` (shared by every API replica),
one file per key id. A new key is published in the JWKS a few minutes before it starts signing
(media servers cache the JWKS), then signs until the next rotation; its public half stays
published until every token it signed has expired, so a media server verifying through the
JWKS never meets a token whose key it cannot know. A replica that sees
an unknown key id rereads the directory (at most once a second), so keys made by another
replica are picked up without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.events import utcnow

KEY_SUFFIX = ".pem"
# A retired key stays published this much longer than the longest token it may have signed.
PUBLICATION_GRACE = timedelta(minutes=2)
# A new key is in the JWKS this long before it signs (longer than the JWKS cache lifetime).
PREPUBLICATION = timedelta(minutes=5)
RESCAN_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created_at: datetime
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey

    @property
    def digest(self) -> bytes:
        """Four bytes naming the key inside compact tokens (where a kid does not fit)."""
        return hashlib.sha256(self.kid.encode()).digest()[:4]

    def jwk(self) -> dict[str, str]:
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


def new_key_id(created_at: datetime) -> str:
    """Key ids sort by creation time, so the directory listing is the rotation history."""
    return f"fg-{created_at.astimezone(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def created_at_of(kid: str) -> datetime | None:
    try:
        stamp = kid.split("-")[1]
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except (IndexError, ValueError):
        return None


class KeyRing:
    def __init__(
        self,
        directory: Path,
        *,
        rotation_period: timedelta,
        longest_token: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.directory = directory
        self.rotation_period = rotation_period
        self.longest_token = longest_token
        self.clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._lock = threading.Lock()
        self._last_scan = 0.0

    # -- loading and rotation ------------------------------------------------------------

    def load(self) -> None:
        """Reads the directory, makes the first key or a rotated one if due, forgets dead keys."""
        with self._lock:
            self._scan()
            self._rotate_if_due()
            self._prune()

    def _scan(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        found: dict[str, SigningKey] = {}
        for path in sorted(self.directory.glob(f"*{KEY_SUFFIX}")):
            kid = path.name.removesuffix(KEY_SUFFIX)
            created = created_at_of(kid)
            if created is None:
                continue
            known = self._keys.get(kid)
            if known is not None:
                found[kid] = known
                continue
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private, Ed25519PrivateKey):
                continue
            found[kid] = SigningKey(kid, created, private, private.public_key())
        self._keys = found
        self._last_scan = time.monotonic()

    def _rotate_if_due(self) -> None:
        newest = self._newest()
        if newest is None:
            self._write_new_key(created=self.clock() - PREPUBLICATION)
        elif self.clock() - newest.created_at >= self.rotation_period - PREPUBLICATION:
            self._write_new_key()

    def _write_new_key(self, created: datetime | None = None) -> SigningKey:
        """A key made now starts signing after PREPUBLICATION; back-date it to sign at once."""
        created = (created or self.clock()).replace(microsecond=0)
        kid = new_key_id(created)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = self.directory / f".{kid}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        os.replace(temporary, self.directory / f"{kid}{KEY_SUFFIX}")
        key = SigningKey(kid, created, private, private.public_key())
        self._keys[kid] = key
        return key

    def _prune(self) -> None:
        for key in self._retired_beyond_publication():
            (self.directory / f"{key.kid}{KEY_SUFFIX}").unlink(missing_ok=True)
            self._keys.pop(key.kid, None)

    def _ordered(self) -> list[SigningKey]:
        return sorted(self._keys.values(), key=lambda key: (key.created_at, key.kid))

    def _newest(self) -> SigningKey | None:
        ordered = self._ordered()
        return ordered[-1] if ordered else None

    def _signing_start(self, key: SigningKey) -> datetime:
        return key.created_at + PREPUBLICATION

    def _active(self) -> SigningKey | None:
        """The newest key already past its pre-publication; the oldest if none is yet."""
        ordered = self._ordered()
        now = self.clock()
        ready = [key for key in ordered if self._signing_start(key) <= now]
        return ready[-1] if ready else (ordered[0] if ordered else None)

    def _retired_beyond_publication(self) -> list[SigningKey]:
        """Keys whose successor has been signing longer than any token of theirs can live."""
        ordered = self._ordered()
        now = self.clock()
        dead = []
        for key, successor in zip(ordered, ordered[1:], strict=False):
            if now - self._signing_start(successor) > self.longest_token + PUBLICATION_GRACE:
                dead.append(key)
        return dead

    def rotate(self, *, immediately: bool = False) -> SigningKey:
        """Makes a new key now; it signs after PREPUBLICATION (or at once when ``immediately``,
        for a compromised key). Earlier keys stay published until their tokens expire."""
        with self._lock:
            created = self.clock() - PREPUBLICATION if immediately else None
            key = self._write_new_key(created)
            self._prune()
            return key

    # -- use -------------------------------------------------------------------------------

    def signing_key(self) -> SigningKey:
        newest = self._newest()
        if (
            newest is None
            or self.clock() - newest.created_at >= self.rotation_period - PREPUBLICATION
        ):
            self.load()
        active = self._active()
        assert active is not None
        return active

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._last_scan >= RESCAN_INTERVAL_SECONDS:
            with self._lock:
                self._scan()
            key = self._keys.get(kid)
        return key.public_key if key is not None else None

    def public_key_by_digest(self, digest: bytes) -> Ed25519PublicKey | None:
        for _ in range(2):
            for key in self._keys.values():
                if key.digest == digest:
                    return key.public_key
            if time.monotonic() - self._last_scan < RESCAN_INTERVAL_SECONDS:
                return None
            with self._lock:
                self._scan()
        return None

    def published(self) -> list[SigningKey]:
        """The keys in the JWKS: the signing key and every retired key whose tokens may live."""
        if (
            time.monotonic() - self._last_scan >= RESCAN_INTERVAL_SECONDS
            or self._retired_beyond_publication()
        ):
            self.load()
        return list(reversed(self._ordered()))

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.jwk() for key in self.published()]}
