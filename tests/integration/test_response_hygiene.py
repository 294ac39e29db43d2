"""Answers carry nosniff and a restrictive Content-Security-Policy (the docs page one that
allows exactly its own scripts); /metrics can require a token; /readyz can keep the broker's
address to itself."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from schemas.settings import Settings
from tests.conftest import running_client

pytestmark = [pytest.mark.kafka, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def _directives(policy: str) -> dict[str, set[str]]:
    return {
        name: set(values)
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


async def test_json_answers_and_refusals_are_nosniff_with_a_policy_that_allows_nothing(
    client: httpx.AsyncClient,
) -> None:
    for path, headers in (
        ("/v1/departments", {}),
        ("/v1/departments", {"Authorization": "Bearer nobody-0123456789"}),
        ("/v1/nothing-here", {}),
        ("/healthz", {}),
        ("/openapi.json", {}),
    ):
        response = await client.get(path, headers=headers)
        assert response.headers["content-type"].startswith("application/json"), path
        assert response.headers["x-content-type-options"] == "nosniff", path
        policy = _directives(response.headers["content-security-policy"])
        assert policy["default-src"] == {"'none'"}, path
        assert policy["frame-ancestors"] == {"'none'"}, path


async def test_the_docs_page_policy_allows_exactly_its_own_scripts(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = _directives(response.headers["content-security-policy"])
    assert policy["default-src"] == {"'none'"}
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    assert inline, response.text
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"]
    for source in re.findall(r'<script src="([^"]+)"', response.text):
        assert any(source.startswith(allowed) for allowed in policy["script-src"]), source
    assert "'unsafe-inline'" not in policy["script-src"]
    assert "'unsafe-eval'" not in policy["script-src"]
    assert "'self'" in policy["connect-src"]  # it fetches /openapi.json


async def test_metrics_can_require_a_bearer_token(settings: Settings) -> None:
    token = "metrics-token-0123456789"
    async with running_client(settings.model_copy(update={"metrics_token": token})) as http:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-0123456789"}):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["code"] in ("missing_token", "invalid_token")
            assert "feedgrid_hook_decisions_total" not in refused.text
        allowed = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200 and "feedgrid_http_requests_total" in allowed.text
    async with running_client(settings) as http:  # open by default, as before
        assert (await http.get("/metrics", headers={"Authorization": ""})).status_code == 200


async def test_readyz_can_keep_the_broker_address_to_itself(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    async with running_client(unreachable) as http:
        shown = await http.get("/readyz")
        assert shown.status_code == 503 and "127.0.0.1:1" in shown.text
    hidden = unreachable.model_copy(update={"readyz_shows_addresses": False})
    async with running_client(hidden) as http:
        answer = await http.get("/readyz")
        assert answer.status_code == 503
        assert not answer.json()["checks"]["kafka"]["ok"]
        # other checks registered in this process (a worker's watchdog) are not about the broker
        assert answer.json()["checks"]["kafka"]["detail"] == "no broker answers"
        assert "127.0.0.1:1" not in answer.text
