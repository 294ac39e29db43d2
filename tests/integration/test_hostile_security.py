"""Forged tokens, replayed tokens and path traversal: each refused, and nothing changes.

What tests/integration/test_hooks.py, test_access_identity.py and tests/unit/test_tokens.py
already prove is left to them (expired, tampered signature, garbage, revoked, another issuer,
another key for the identity provider, a token at another grant's feed). Here are the rest:

- identity bearer path (the city's identity provider configured): ``alg: none``, HS256 keyed
  with the provider's public key, a payload tampered under a valid signature, a FeedGrid
  retrieval token used as an identity, and claims of the wrong type from the provider itself;
- retrieval tokens on every media-server hook (MediaMTX, ZLMediaKit, nginx-rtmp): ``alg: none``,
  HS256 keyed with our JWKS key, a foreign key under our key id, an unknown or path-like key
  id, tampered payloads, tampered and foreign compact tokens;
- a token replayed at the other feed of the same grant, and a compact token replayed through
  the hooks that look feeds up by path;
- path traversal (``../``, ``%2e%2e%2f``, absolute paths, ...) in hook requests, and in media
  paths at registration, by merge patch and by bulk import.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from registry_api.tokens import compact as compact_codec
from tests.integration.access_world import (
    POLICE,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    camera_body,
    gateway_path,
)
from tests.integration.hostile_support import changed_tables, registry_state
from tests.integration.test_access_identity import (  # noqa: F401 - fixtures used by name
    IdentityProvider,
    identity_provider,
    idp_client,
)
from tests.integration.test_hooks import SERVERS

# Token and path handling do not depend on the registry database: SQLite only.
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.usefixtures("database_url"),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def assemble(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}.{b64(signature)}"


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return orjson.loads(unb64(header)), orjson.loads(unb64(payload)), unb64(signature)


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """An HMAC-signed JWT; PyJWT refuses to key HMAC with a public key, an attacker does not."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def with_payload(token: str, **changes: Any) -> str:
    """The token's header and signature around a changed payload."""
    header, payload, signature = token.split(".")
    claims = orjson.loads(unb64(payload))
    claims.update(changes)
    return f"{header}.{b64(orjson.dumps(claims))}.{signature}"


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await build_world(client)


async def grant_tokens(world: World, *feeds: str) -> dict[str, dict[str, Any]]:
    """URBAN's one grant on ``feeds`` (all TRANSPORT's): per feed, its retrieval entry."""
    answer = await world.request(URBAN, feed_ids=[world.feed_id(feed) for feed in feeds])
    grant_ids = {feed["grant_id"] for feed in answer["feeds"]}
    assert len(grant_ids) == 1 and None not in grant_ids, answer
    retrieval = await world.retrieval(URBAN, grant_ids.pop())
    assert retrieval.status_code == 200, retrieval.text
    by_id = {entry["feed_id"]: entry for entry in retrieval.json()["feeds"]}
    return {feed: by_id[world.feed_id(feed)] for feed in feeds}


async def assert_every_server_refuses(
    world: World, attempts: list[tuple[str, str, str]], expected_code: str | None = None
) -> None:
    """Each (label, path, token) is refused by every hook, and the registry stays as it was."""
    before = await registry_state(world.runtime)
    wrongly_allowed = []
    for server, ask in SERVERS.items():
        for label, path, token in attempts:
            allowed, status, code = await ask(world, path, token, "live")
            if allowed or status >= 500 or (expected_code and code != expected_code):
                wrongly_allowed.append(f"{server} {label}: allowed={allowed} {status} {code}")
    assert not wrongly_allowed, "\n".join(wrongly_allowed)
    assert changed_tables(before, await registry_state(world.runtime)) == []


# ------------------------------------------------------------------ retrieval tokens


def forged_retrieval_tokens(world: World, valid: str) -> dict[str, tuple[str, str]]:
    """(forged token, the code the hooks must refuse it with), by what is forged."""
    header, claims, signature = parts(valid)
    keyring = world.runtime.access.keyring
    public_raw = keyring.public_key(header["kid"]).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    foreign = Ed25519PrivateKey.generate()
    later = int(time.time()) + 30 * 24 * 3600
    return {
        "alg none": (assemble({**header, "alg": "none"}, claims), "token_invalid"),
        "alg none, no signature part": (
            assemble({"alg": "none", "typ": "JWT"}, claims)[:-1],
            "token_malformed",
        ),
        "HS256 keyed with our public key": (
            hs256({**header, "alg": "HS256"}, claims, public_raw),
            "token_invalid",
        ),
        "HS256 keyed with our JWKS x": (
            hs256({**header, "alg": "HS256"}, claims, b64(public_raw).encode()),
            "token_invalid",
        ),
        "a foreign key under our key id": (
            jwt.encode(claims, foreign, algorithm="EdDSA", headers={"kid": header["kid"]}),
            "token_bad_signature",
        ),
        "an unknown key id": (
            jwt.encode(claims, foreign, algorithm="EdDSA", headers={"kid": "fg-20260101T000000-x"}),
            "token_unknown_key",
        ),
        "a key id that is a path": (
            jwt.encode(
                claims, foreign, algorithm="EdDSA", headers={"kid": f"../keys/{header['kid']}"}
            ),
            "token_unknown_key",
        ),
        "payload tampered: a month longer": (with_payload(valid, exp=later), "token_bad_signature"),
        "payload tampered: more actions": (
            with_payload(valid, actions=["live", "playback", "download", "ptz"]),
            "token_bad_signature",
        ),
        "payload tampered: another department": (
            with_payload(valid, dept=POLICE, sub="key:forged"),
            "token_bad_signature",
        ),
        "signature of another token": (
            f"{valid.rsplit('.', 1)[0]}.{b64(signature[::-1])}",
            "token_bad_signature",
        ),
    }


async def test_forged_retrieval_jwts_are_refused_by_every_hook(world: World) -> None:
    tokens = await grant_tokens(world, "unconditional")
    valid = tokens["unconditional"]["token"]
    path = gateway_path(world, "unconditional")
    for label, (token, code) in forged_retrieval_tokens(world, valid).items():
        await assert_every_server_refuses(world, [(label, path, token)], expected_code=code)
    # The genuine token still opens the feed: the refusals were about the forgeries.
    for ask in SERVERS.values():
        assert (await ask(world, path, valid, "live"))[0]


async def test_tampered_and_foreign_compact_tokens_are_refused_by_every_hook(
    world: World,
) -> None:
    tokens = await grant_tokens(world, "unconditional")
    token = tokens["unconditional"]["compact_token"]
    assert token and token.startswith(compact_codec.PREFIX)
    path = gateway_path(world, "unconditional")
    keyring = world.runtime.access.keyring
    decoded = compact_codec.decode(token, keyring.public_key_by_digest)
    raw = bytearray(unb64(token.removeprefix(compact_codec.PREFIX)))

    def flipped(offset: int) -> str:
        changed = bytearray(raw)
        changed[offset] ^= 0x01
        return compact_codec.PREFIX + b64(bytes(changed))

    header_size = compact_codec._HEADER.size
    forged: dict[str, tuple[str, str]] = {
        "a later expiry": (flipped(9), "token_bad_signature"),
        "more actions": (flipped(13), "token_bad_signature"),
        "another grant": (flipped(30), "token_bad_signature"),
        "another feed id": (flipped(header_size + 1), "token_bad_signature"),
        "signed by a foreign key": (
            compact_codec.encode(decoded, Ed25519PrivateKey.generate()),
            "token_bad_signature",
        ),
        "an unknown key digest": (
            compact_codec.encode(
                compact_codec.CompactClaims(
                    key_digest=b"\x00\x01\x02\x03",
                    not_before=decoded.not_before,
                    expires_at=decoded.expires_at + 86_400,
                    actions=decoded.actions,
                    token_id=decoded.token_id,
                    grant_id=decoded.grant_id,
                    feed_id=decoded.feed_id,
                ),
                Ed25519PrivateKey.generate(),
            ),
            "token_unknown_key",
        ),
        "truncated": (token[:-20], "token_malformed"),
        "the prefix alone": (compact_codec.PREFIX, "token_malformed"),
    }
    for label, (forgery, code) in forged.items():
        await assert_every_server_refuses(world, [(label, path, forgery)], expected_code=code)


async def test_a_token_replayed_at_the_other_feed_of_its_grant_is_refused(world: World) -> None:
    """One grant, two feeds: each token opens its own feed only, JWT and compact alike."""
    tokens = await grant_tokens(world, "unconditional", "conditional")
    attempts = [
        (f"{kind} of {source} at {target}", gateway_path(world, target), tokens[source][kind])
        for source, target in (("unconditional", "conditional"), ("conditional", "unconditional"))
        for kind in ("token", "compact_token")
    ]
    await assert_every_server_refuses(world, attempts, expected_code="token_for_another_feed")
    for feed in ("unconditional", "conditional"):
        for kind in ("token", "compact_token"):
            for server, ask in SERVERS.items():
                allowed, status, code = await ask(
                    world, gateway_path(world, feed), tokens[feed][kind], "live"
                )
                assert allowed, (server, feed, kind, status, code)


def traversal_paths(world: World, feed: str, elsewhere: str) -> dict[str, str]:
    """Other spellings of a feed's gateway path, and climbs from it to another feed's."""
    app, media = gateway_path(world, feed).split("/", 1)
    owner, code = media.split("/", 1)
    other = world.feeds[elsewhere]["stream"]["media_path"]
    return {
        "dot-dot back into itself": f"{app}/{owner}/../{owner}/{code}",
        "dot-dot after the name": f"{app}/{media}/../{code}",
        "climb to another department's feed": f"{app}/{media}/../../{other}",
        "climb out of the app": f"{app}/../{app}/{media}",
        "percent-encoded dot-dot-slash": f"{app}/{owner}/%2e%2e%2f{owner}/{code}",
        "percent-encoded slash": f"{app}/{owner}%2F{code}",
        "absolute path": f"/{app}/{media}",
        "absolute system path": "/etc/passwd",
        "a dot segment": f"{app}/./{media}",
        "an empty segment": f"{app}//{media}",
        "a trailing slash": f"{app}/{media}/",
        "backslashes": f"{app}/{owner}\\..\\{owner}\\{code}",
    }


async def test_path_traversal_in_hook_requests_opens_nothing(world: World) -> None:
    tokens = await grant_tokens(world, "unconditional")
    attempts = [
        (f"{label} ({kind})", path, tokens["unconditional"][kind])
        for label, path in traversal_paths(world, "unconditional", "police_camera").items()
        for kind in ("token", "compact_token")
    ]
    await assert_every_server_refuses(world, attempts)


# ------------------------------------------------------------------ media paths in the registry

TRAVERSING_MEDIA_PATHS = {
    "parent at the start": "../lz-gaj/cam",
    "parents in the middle": "lz-jtj/../../etc/passwd",
    "a trailing parent": "lz-jtj/..",
    "a parent alone": "..",
    "absolute": "/etc/passwd",
    "absolute in the owner's space": "/lz-jtj/cam",
    "percent-encoded dot-dot-slash": "%2e%2e%2flz-gaj%2fcam",
    "percent-encoded parent segment": "lz-jtj/%2e%2e/lz-gaj/cam",
    "backslash parents": "lz-jtj\\..\\lz-gaj\\cam",
    "a newline after the path": "lz-jtj/cam\n",
    "a NUL-free control character": "lz-jtj/cam\t",
    "a URL instead of a path": "rtsp://10.0.0.1/cam",
    "too long": "lz-jtj/" + "a" * 300,
}


def with_media_path(body: dict[str, Any], media_path: str) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["stream"]["media_path"] = media_path
    return changed


async def expect_refusals(
    world: World, send: Callable[[str], Any], what: str
) -> list[tuple[str, int, str]]:
    """Sends each traversing media path; returns the ones not refused with a 4xx."""
    failures = []
    for label, media_path in TRAVERSING_MEDIA_PATHS.items():
        response: httpx.Response = await send(media_path)
        if not 400 <= response.status_code < 500:
            failures.append((f"{what}: {label}", response.status_code, response.text[:200]))
    return failures


async def test_traversing_media_paths_are_refused_at_registration_patch_and_bulk(
    world: World,
) -> None:
    client = world.client
    admin = world.auth(TRANSPORT, "dept_admin")
    body = camera_body(TRANSPORT, 40, {"class": "unconditional"})
    target = world.feeds["unconditional"]
    before = await registry_state(world.runtime)

    async def register(media_path: str) -> httpx.Response:
        return await client.post("/v1/feeds", json=with_media_path(body, media_path), headers=admin)

    async def patch(media_path: str) -> httpx.Response:
        return await client.patch(
            f"/v1/feeds/{target['id']}",
            json={"stream": {"media_path": media_path}},
            headers={**admin, "If-Match": str(target["version"])},
        )

    failures = await expect_refusals(world, register, "POST /v1/feeds")
    failures += await expect_refusals(world, patch, "PATCH /v1/feeds/{id}")
    assert not failures, failures

    features = []
    for serial, media_path in enumerate(TRAVERSING_MEDIA_PATHS.values(), start=50):
        properties = with_media_path(
            camera_body(TRANSPORT, serial, {"class": "unconditional"}), media_path
        )
        location = properties.pop("location")
        features.append({"type": "Feature", "geometry": location, "properties": properties})
    bulk = await client.post(
        "/v1/feeds/bulk",
        content=b"\n".join(orjson.dumps(feature) for feature in features),
        headers={**admin, "Content-Type": "application/x-ndjson"},
    )
    assert bulk.status_code == 200, bulk.text
    result = bulk.json()
    assert (result["created"], result["updated"]) == (0, 0), result
    assert sorted(reject["index"] for reject in result["rejected"]) == list(range(len(features)))
    assert changed_tables(before, await registry_state(world.runtime)) == []


# ------------------------------------------------------------------ identity bearer tokens


def forged_identity_tokens(provider: IdentityProvider, world: World, valid: str) -> dict[str, str]:
    header, claims, _ = parts(valid)
    public_pem = provider.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    admin_claims = {**claims, "roles": ["city_admin"], "department": TRANSPORT}
    return {
        "alg none with the provider's key id": assemble({**header, "alg": "none"}, admin_claims),
        "alg none without a key id": assemble({"alg": "none", "typ": "JWT"}, admin_claims),
        "HS256 keyed with the provider's public key": hs256(
            {**header, "alg": "HS256"}, admin_claims, public_pem
        ),
        "payload tampered: city admin": with_payload(valid, roles=["city_admin"]),
        "payload tampered: another department": with_payload(
            valid, department=TRANSPORT, roles=["dept_admin"]
        ),
        "payload tampered: no expiry": with_payload(valid, exp=None),
        "three dots of nothing": "ey..",
    }


async def test_forged_identity_jwts_are_refused_and_change_nothing(
    idp_client: httpx.AsyncClient,  # noqa: F811 - the imported fixture
    identity_provider: IdentityProvider,  # noqa: F811
) -> None:
    world = await build_world(idp_client)
    valid = identity_provider.token()
    grant = await grant_tokens(world, "unconditional")
    retrieval_token = grant["unconditional"]["token"]
    forged = forged_identity_tokens(identity_provider, world, valid)
    forged["a FeedGrid retrieval token"] = retrieval_token
    # Signed by the provider itself, but with claims of the wrong shape.
    forged["roles claim is null"] = identity_provider.token(roles=None)
    forged["roles claim is a number"] = identity_provider.token(roles=5)
    forged["department claim is a list"] = identity_provider.token(department=[URBAN])
    request = {
        "feed_ids": [world.feed_id("unconditional"), world.feed_id("conditional")],
        "purpose": "traffic management",
        "actions": ["live"],
    }
    before = await registry_state(world.runtime)
    answers = {}
    for label, token in forged.items():
        headers = {"Authorization": f"Bearer {token}"}
        made = await idp_client.post("/v1/access-requests", json=request, headers=headers)
        listed = await idp_client.get("/v1/grants", headers=headers)
        answers[label] = (made.status_code, listed.status_code)
    refused = {label: codes for label, codes in answers.items() if codes[0] in (401, 403)}
    assert refused == answers, answers
    assert all(listed in (401, 403) for _, listed in answers.values()), answers
    assert changed_tables(before, await registry_state(world.runtime)) == []
    # The genuine token still works: the refusals were about the forgeries.
    genuine = await idp_client.get("/v1/grants", headers={"Authorization": f"Bearer {valid}"})
    assert genuine.status_code == 200, genuine.text


async def test_dashboard_assets_cannot_be_climbed_out_of(client: httpx.AsyncClient) -> None:
    """The dashboard serves a fixed list of files: no name reaches the package's source."""
    names = (
        "../routes.py",
        "..%2froutes.py",
        "%2e%2e%2f%2e%2e%2fapp.py",
        "%2E%2E%5Croutes.py",
        "....%2f%2froutes.py",
        "%2fetc%2fpasswd",
        "index.html",
        "static%2fapp.js",
        "app.js%00.py",
        "__init__.py",
    )
    for name in names:
        response = await client.get(f"/dashboard/assets/{name}")
        assert response.status_code in (400, 404), (name, response.status_code)
        assert b"import " not in response.content and b"root:" not in response.content, name
    served = await client.get("/dashboard/assets/app.js")
    assert served.status_code == 200  # the listed files are served: the refusals are real
