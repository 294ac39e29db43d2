"""One identity for every department: JWTs from the city's identity provider, verified locally
against its JWKS (served here by a small HTTP server on loopback, as the provider would)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from registry_api.app import create_app
from schemas.settings import Settings
from tests.integration.access_world import TRANSPORT, URBAN, build_world

pytestmark = pytest.mark.kafka

ISSUER = "https://idp.lanzhou.example/realms/city"


class IdentityProvider:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "city-idp-1"
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                provider.fetches += 1
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(provider.key.public_key()))
                body = json.dumps(
                    {"keys": [{**jwk, "kid": provider.kid, "alg": "RS256", "use": "sig"}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/protocol/openid-connect/certs"

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "sub": "u-1001",
            "aud": "feedgrid",
            "iat": now,
            "exp": now + 300,
            "department": URBAN,
            "roles": ["requester"],
        }
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def identity_provider() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.thread.start()
    yield provider
    provider.server.shutdown()
    provider.server.server_close()


@pytest.fixture
async def idp_client(
    settings: Settings, identity_provider: IdentityProvider
) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings.model_copy(
        update={
            "idp_issuer": ISSUER,
            "idp_jwks_url": identity_provider.jwks_url,
            "idp_audience": "feedgrid",
        }
    )
    application = create_app(configured)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://feedgrid.test", timeout=60
        ) as http:
            http.headers["Authorization"] = f"Bearer {configured.admin_token}"
            http.app = application  # type: ignore[attr-defined]
            yield http


async def test_identity_provider_jwt_acts_as_its_department_and_roles(
    idp_client: httpx.AsyncClient, identity_provider: IdentityProvider
) -> None:
    world = await build_world(idp_client)
    token = identity_provider.token()
    answer = await idp_client.post(
        "/v1/access-requests",
        json={
            "feed_ids": [world.feed_id("unconditional")],
            "purpose": "traffic management",
            "actions": ["live"],
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["requester"] == "idp:u-1001"
    assert answer.json()["requester_department"] == URBAN
    grant_id = answer.json()["feeds"][0]["grant_id"]
    retrieval = await idp_client.get(
        f"/v1/grants/{grant_id}/retrieval", headers={"Authorization": f"Bearer {token}"}
    )
    claims = jwt.decode(retrieval.json()["feeds"][0]["token"], options={"verify_signature": False})
    assert (claims["sub"], claims["dept"]) == ("idp:u-1001", URBAN)
    # The same identity, in another department's token, gets nothing of this grant.
    other = identity_provider.token(department=TRANSPORT)
    refused = await idp_client.get(
        f"/v1/grants/{grant_id}/retrieval", headers={"Authorization": f"Bearer {other}"}
    )
    assert refused.status_code == 404
    # Keys are fetched once and cached.
    for _ in range(5):
        await idp_client.get("/v1/access-requests", headers={"Authorization": f"Bearer {token}"})
    assert identity_provider.fetches == 1


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://someone-else.example"},
        {"exp": int(time.time()) - 60},
        {"aud": "another-service"},
        {"department": None, "roles": ["requester"]},
    ],
)
async def test_identity_provider_jwt_with_wrong_issuer_expiry_audience_or_no_department_is_refused(
    idp_client: httpx.AsyncClient, identity_provider: IdentityProvider, claims: dict[str, Any]
) -> None:
    token = identity_provider.token(**claims)
    response = await idp_client.get(
        "/v1/access-requests", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_jwt_signed_by_another_key_is_refused(idp_client: httpx.AsyncClient) -> None:
    impostor = IdentityProvider()
    impostor.server.server_close()
    response = await idp_client.get(
        "/v1/access-requests", headers={"Authorization": f"Bearer {impostor.token()}"}
    )
    assert response.status_code == 401
