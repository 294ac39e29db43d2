"""The Ed25519 key ring, its JWKS, and retrieval-token minting and verification."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from registry_api.tokens.keyring import KeyRing
from registry_api.tokens.service import AUDIENCE, RetrievalTokens, TokenRejected

TTL = timedelta(minutes=15)
START = datetime(2025, 3, 12, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _ring(directory: Path, clock: Clock, rotation: timedelta = timedelta(days=30)) -> KeyRing:
    ring = KeyRing(directory, rotation_period=rotation, longest_token=TTL, clock=clock)
    ring.load()
    return ring


def _mint(tokens: RetrievalTokens, now: datetime, **overrides: object) -> tuple[str, object]:
    values: dict[str, object] = {
        "subject": "key:abc:alice",
        "department": "lz-cgj",
        "grant_id": "g1",
        "feed_id": "f1",
        "actions": ["live", "playback", "snapshot"],
        "media_path": "live/lz-jtj/cam1",
        "grant_valid_from": now - timedelta(minutes=1),
        "grant_valid_until": now + timedelta(hours=2),
        "now": now,
    }
    values.update(overrides)
    minted = tokens.mint(**values)  # type: ignore[arg-type]
    return minted.token, minted


def test_first_load_creates_a_private_key_file_readable_only_by_us(tmp_path: Path) -> None:
    ring = _ring(tmp_path, Clock(START))
    files = list(tmp_path.glob("*.pem"))
    assert len(files) == 1
    assert files[0].stat().st_mode & 0o777 == 0o600
    assert ring.signing_key().kid == files[0].stem


def test_jwks_publishes_okp_ed25519_public_keys_only(tmp_path: Path) -> None:
    ring = _ring(tmp_path, Clock(START))
    (key,) = ring.jwks()["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA"
    assert "d" not in key
    raw = base64.urlsafe_b64decode(key["x"] + "==")
    public = Ed25519PublicKey.from_public_bytes(raw)
    tokens = RetrievalTokens(ring, issuer="feedgrid", ttl=TTL)
    token, _ = _mint(tokens, datetime.now(UTC))
    decoded = jwt.decode(token, public, algorithms=["EdDSA"], audience=AUDIENCE)
    assert decoded["feed"] == "f1"


def test_rotation_publishes_the_new_key_before_it_signs_and_the_old_until_its_tokens_expire(
    tmp_path: Path,
) -> None:
    clock = Clock(START)
    ring = _ring(tmp_path, clock, rotation=timedelta(days=1))
    tokens = RetrievalTokens(ring, issuer="feedgrid", ttl=TTL)
    old_kid = ring.signing_key().kid
    old_token, _ = _mint(tokens, clock.now)

    clock.now = START + timedelta(days=1)
    assert ring.signing_key().kid == old_kid  # the new key is made, published, not signing yet
    (new_key, old_key) = ring.jwks()["keys"]
    assert old_key["kid"] == old_kid and new_key["kid"] != old_kid
    new_kid = new_key["kid"]

    clock.now = START + timedelta(days=1, minutes=5, seconds=1)
    assert ring.signing_key().kid == new_kid
    assert [key["kid"] for key in ring.jwks()["keys"]] == [new_kid, old_kid]
    # A token signed before rotation still verifies after it.
    assert tokens.verify(old_token, now=(START + timedelta(minutes=5)).timestamp()).feed_id == "f1"

    clock.now = START + timedelta(days=1, minutes=5 + 15 + 2, seconds=2)
    assert [key["kid"] for key in ring.jwks()["keys"]] == [new_kid]
    assert not (tmp_path / f"{old_kid}.pem").exists()


def test_a_second_replica_picks_up_a_key_made_by_the_first(tmp_path: Path) -> None:
    clock = Clock(START)
    first = _ring(tmp_path, clock)
    second = _ring(tmp_path, clock)
    assert first.signing_key().kid == second.signing_key().kid
    clock.now += timedelta(minutes=1)  # a rotation happens after the first key's creation
    rotated = first.rotate(immediately=True)
    token, _ = _mint(RetrievalTokens(first, issuer="feedgrid", ttl=TTL), datetime.now(UTC))
    assert jwt.get_unverified_header(token)["kid"] == rotated.kid
    import time

    time.sleep(1.05)  # the unknown-kid rescan is rate limited to once a second
    assert RetrievalTokens(second, issuer="feedgrid", ttl=TTL).verify(token).grant_id == "g1"


def test_token_carries_user_department_grant_feed_actions_and_mediamtx_permissions(
    tmp_path: Path,
) -> None:
    ring = _ring(tmp_path, Clock(START))
    tokens = RetrievalTokens(ring, issuer="feedgrid", ttl=TTL)
    now = datetime.now(UTC).replace(microsecond=0)
    token, _ = _mint(tokens, now)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "key:abc:alice"
    assert claims["dept"] == "lz-cgj"
    assert claims["grant"] == "g1" and claims["feed"] == "f1"
    assert claims["actions"] == ["live", "playback", "snapshot"]
    assert claims["exp"] - claims["nbf"] == 15 * 60
    assert claims["jti"]
    assert claims["mediamtx_permissions"] == [
        {"action": "playback", "path": "live/lz-jtj/cam1"},
        {"action": "read", "path": "live/lz-jtj/cam1"},
    ]
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"


def test_token_never_outlives_its_grant(tmp_path: Path) -> None:
    tokens = RetrievalTokens(_ring(tmp_path, Clock(START)), issuer="feedgrid", ttl=TTL)
    now = datetime.now(UTC).replace(microsecond=0)
    _, minted = _mint(tokens, now, grant_valid_until=now + timedelta(minutes=4))
    assert minted.expires_at == now + timedelta(minutes=4)  # type: ignore[attr-defined]
    with pytest.raises(TokenRejected) as refused:
        _mint(tokens, now, grant_valid_until=now - timedelta(seconds=1))
    assert refused.value.code == "grant_expired"


def test_token_for_a_future_grant_starts_with_the_grant(tmp_path: Path) -> None:
    tokens = RetrievalTokens(_ring(tmp_path, Clock(START)), issuer="feedgrid", ttl=TTL)
    now = datetime.now(UTC).replace(microsecond=0)
    token, _ = _mint(tokens, now, grant_valid_from=now + timedelta(hours=1))
    with pytest.raises(TokenRejected) as early:
        tokens.verify(token, now=now.timestamp())
    assert early.value.code == "token_not_yet_valid"
    assert (
        tokens.verify(token, now=(now + timedelta(hours=1, seconds=1)).timestamp()).feed_id == "f1"
    )


def test_expired_token_is_rejected_even_after_a_cached_verification(tmp_path: Path) -> None:
    tokens = RetrievalTokens(_ring(tmp_path, Clock(START)), issuer="feedgrid", ttl=TTL)
    now = datetime.now(UTC)
    token, _ = _mint(tokens, now)
    assert tokens.verify(token).feed_id == "f1"
    with pytest.raises(TokenRejected) as expired:
        tokens.verify(token, now=(now + TTL + timedelta(seconds=1)).timestamp())
    assert expired.value.code == "token_expired"
    # Bytes and durations of ended sessions are still attributed to the token's grant.
    assert (
        tokens.verify(token, now=(now + timedelta(days=1)).timestamp(), check_time=False).grant_id
        == "g1"
    )


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (
            lambda token: token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
            "token_bad_signature",
        ),
        (lambda token: "not-a-jwt", "token_malformed"),
    ],
)
def test_tampered_or_garbage_tokens_are_rejected(tmp_path: Path, tamper: object, code: str) -> None:
    tokens = RetrievalTokens(_ring(tmp_path, Clock(START)), issuer="feedgrid", ttl=TTL)
    token, _ = _mint(tokens, datetime.now(UTC))
    with pytest.raises(TokenRejected) as rejected:
        tokens.verify(tamper(token))  # type: ignore[operator]
    assert rejected.value.code == code


def test_token_signed_by_a_foreign_key_is_rejected(tmp_path: Path) -> None:
    tokens = RetrievalTokens(_ring(tmp_path, Clock(START)), issuer="feedgrid", ttl=TTL)
    now = datetime.now(UTC)
    claims = {
        "iss": "feedgrid",
        "aud": AUDIENCE,
        "sub": "x",
        "grant": "g",
        "feed": "f",
        "path": "p",
        "jti": "j",
        "nbf": int(now.timestamp()),
        "exp": int(now.timestamp()) + 60,
    }
    own_kid = tokens.keyring.signing_key().kid
    forged = jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": own_kid}
    )
    with pytest.raises(TokenRejected) as same_kid:
        tokens.verify(forged)
    assert same_kid.value.code == "token_bad_signature"
    unknown = jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "fg-x"}
    )
    with pytest.raises(TokenRejected) as unknown_kid:
        tokens.verify(unknown)
    assert unknown_kid.value.code == "token_unknown_key"


def test_token_from_another_issuer_is_rejected(tmp_path: Path) -> None:
    ring = _ring(tmp_path, Clock(START))
    ours = RetrievalTokens(ring, issuer="feedgrid", ttl=TTL)
    theirs = RetrievalTokens(ring, issuer="someone-else", ttl=TTL)
    token, _ = _mint(theirs, datetime.now(UTC))
    with pytest.raises(TokenRejected) as rejected:
        ours.verify(token)
    assert rejected.value.code == "token_invalid"


def test_compact_token_carries_the_same_binding_in_under_256_characters(tmp_path: Path) -> None:
    tokens = RetrievalTokens(_ring(tmp_path, Clock(START)), issuer="feedgrid", ttl=TTL)
    now = datetime.now(UTC)
    grant = "0123456789abcdef0123456789abcdef"
    _, minted = _mint(tokens, now, grant_id=grant, feed_id="01JD3V5X0000000000000000AB")
    compact = minted.compact  # type: ignore[attr-defined]
    assert compact is not None and len("token=" + compact) <= 256
    claims = tokens.verify(compact)
    jwt_claims = minted.claims  # type: ignore[attr-defined]
    assert (claims.grant_id, claims.feed_id, claims.token_id) == (
        grant,
        jwt_claims.feed_id,
        jwt_claims.token_id,
    )
    assert claims.actions == {"live", "playback", "snapshot"}
    assert (claims.not_before, claims.expires_at) == (jwt_claims.not_before, jwt_claims.expires_at)
    assert claims.media_path == ""  # names the feed, not the path
    with pytest.raises(TokenRejected) as expired:
        tokens.verify(compact, now=(now + TTL + timedelta(seconds=1)).timestamp())
    assert expired.value.code == "token_expired"


def test_tampered_or_foreign_compact_token_is_rejected(tmp_path: Path) -> None:
    from registry_api.tokens import compact as compact_codec

    tokens = RetrievalTokens(_ring(tmp_path, Clock(START)), issuer="feedgrid", ttl=TTL)
    now = datetime.now(UTC)
    _, minted = _mint(tokens, now, grant_id="0123456789abcdef0123456789abcdef")
    token: str = minted.compact  # type: ignore[attr-defined]
    raw = bytearray(compact_codec._b64decode(token.removeprefix(compact_codec.PREFIX)))
    raw[10] ^= 0xFF  # a bit of the expiry
    forged = compact_codec.PREFIX + compact_codec._b64encode(bytes(raw))
    with pytest.raises(TokenRejected) as tampered:
        tokens.verify(forged)
    assert tampered.value.code == "token_bad_signature"
    decoded = compact_codec.decode(token, tokens.keyring.public_key_by_digest)
    foreign = compact_codec.encode(decoded, Ed25519PrivateKey.generate())
    with pytest.raises(TokenRejected) as other_key:
        tokens.verify(foreign)
    assert other_key.value.code == "token_bad_signature"
    with pytest.raises(TokenRejected) as garbage:
        tokens.verify(compact_codec.PREFIX + "AAAA")
    assert garbage.value.code == "token_malformed"
