"""The process-level contract: health, readiness, metrics, topics, identity, error shapes."""

from __future__ import annotations

import asyncio
import socket
import sys

import httpx
import pytest

from infra.kafka_admin import describe_topic_configs
from registry_api.app import create_app
from registry_api.db import WriteTurn
from schemas.settings import Settings
from schemas.topics import TOPIC_SPECS, topic_name
from tests.switch_intervals import interval_in_a_turn

pytestmark = pytest.mark.kafka


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_healthz_answers_without_identity(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_names_each_dependency_and_is_green_with_real_services(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/readyz")
    body = response.json()
    assert set(body["checks"]) == {"database", "kafka", "clickhouse"}
    assert response.status_code == 200, body
    assert body["status"] == "ready"


async def test_readyz_reports_a_stopped_broker_as_not_ready(settings: Settings) -> None:
    dead = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{_closed_port()}"})
    application = create_app(dead)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["kafka"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


async def test_topics_are_created_at_start_with_their_cleanup_policy(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    await asyncio.wait_for(runtime.topics_ready.wait(), 30)
    names = [topic_name(settings.topic_prefix, spec.suffix) for spec in TOPIC_SPECS]
    # Right after creation a broker may still answer a topic's configs empty: ask again.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        configs = await describe_topic_configs(settings.kafka_bootstrap, names)
        complete = all(
            set(spec.config) <= set(configs.get(topic_name(settings.topic_prefix, spec.suffix), {}))
            for spec in TOPIC_SPECS
        )
        if complete or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    for spec in TOPIC_SPECS:
        read_back = configs[topic_name(settings.topic_prefix, spec.suffix)]
        for key, value in spec.config.items():
            assert read_back[key] == value, (spec.suffix, key)
    assert (
        configs[topic_name(settings.topic_prefix, "feed-metadata")]["cleanup.policy"] == "compact"
    )


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert (
        'feedgrid_http_requests_total{method="GET",route="/healthz",status="200"}' in response.text
    )


async def test_openapi_docs_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "FeedGrid"
    assert "/v1/departments" in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_department_api_key_grants_its_roles_and_nothing_more(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        "/v1/departments",
        json={
            "code": "lz-jtj",
            "name": "Transport Bureau",
            "kind": "transport",
            "answer_deadline_days": 3,
        },
    )
    assert created.status_code == 201, created.text
    issued = await client.post(
        "/v1/departments/lz-jtj/api-keys", json={"name": "alice", "roles": ["requester"]}
    )
    assert issued.status_code == 201
    key = issued.json()["key"]

    as_alice = {"Authorization": f"Bearer {key}"}
    listed = await client.get("/v1/departments", headers=as_alice)
    assert [d["code"] for d in listed.json()] == ["lz-jtj"]
    refused = await client.post(
        "/v1/departments", headers=as_alice, json={"code": "x-1", "name": "X", "kind": "other"}
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "role_required"
    assert (
        await client.get("/v1/departments", headers={"Authorization": "Bearer fgk_nope_nope"})
    ).status_code == 401
    assert (
        await client.get("/v1/departments", headers={"Authorization": key[:-2] + "xx"})
    ).status_code == 401


async def test_duplicate_department_is_a_conflict(client: httpx.AsyncClient) -> None:
    body = {"code": "lz-psb", "name": "Public Security", "kind": "public_security"}
    assert (await client.post("/v1/departments", json=body)).status_code == 201
    again = await client.post("/v1/departments", json=body)
    assert again.status_code == 409
    assert again.json()["code"] == "department_exists"


async def test_missing_token_is_401_with_a_reason(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/departments", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.json()["code"] == "missing_token"


async def test_invalid_body_is_422_with_code_and_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/departments", json={"code": "BAD CODE", "name": "x", "kind": "police"}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_request"
    assert {tuple(item["loc"]) for item in body["details"]} >= {("body", "code"), ("body", "kind")}


async def test_oversized_body_is_refused_with_413(settings: Settings) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    application = create_app(small)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.post(
                "/v1/departments",
                content=b'{"code":"' + b"a" * 5000 + b'"}',
                headers={
                    "Authorization": f"Bearer {settings.admin_token}",
                    "Content-Type": "application/json",
                },
            )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_a_sqlite_writer_gets_the_gil_back_sooner_while_it_holds_its_turn(
    settings: Settings,
) -> None:
    """While the API runs, a writer holding its turn has the configured switch interval (its
    thread waits that long at most for the GIL after each statement, infra/gil.py); between
    turns, and once the API has stopped, the process has its own."""
    before = sys.getswitchinterval()
    turn = WriteTurn()
    tuned = settings.model_copy(update={"gil_switch_interval_ms": 0.25})
    application = create_app(tuned)
    async with application.router.lifespan_context(application):
        assert sys.getswitchinterval() == before
        assert interval_in_a_turn(turn) == pytest.approx((0.00025, before))
    assert interval_in_a_turn(turn) == (before, before)
