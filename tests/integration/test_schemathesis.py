"""Schemathesis against the API's own OpenAPI: every operation, with valid identities.

A real uvicorn serves ``build_app()`` on a free loopback port with the embedded stream worker
(the ``feedgrid up`` configuration: real Kafka, SQLite, chdb), seeded through the API with
departments, feeds of every sharing class, requests, grants and media-server retrievals, so
analytics answer with real rows. Every operation is then fuzzed as the city admin and as a
department admin, with data generated from its documented schema. Path ids are replaced half
the time by ids that exist, so the fuzz reaches the code behind the 404s.

Every response must hold: no 5xx, a documented status code, a documented content type,
documented headers, and a body that conforms to the documented schema. Each failure is
collected (not shrunk) so one run reports all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import orjson
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import DataGenerationMethod, GenerationConfig
from schemathesis.checks import not_a_server_error
from schemathesis.internal.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deploy.composition import build_app
from schemas.settings import Settings
from tests.integration.access_world import (
    ENVIRONMENT,
    POLICE,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    gateway_path,
)
from tests.integration.server_support import serving
from tests.integration.streams_support import (
    ADMIN_TOKEN,
    close_analytics,
    make_settings,
    wait_for_value,
)

pytestmark = pytest.mark.kafka

CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)
MINIMUM_REQUESTS = 2_000
# Generated examples per (operation, identity). Operations with a small input space (no
# parameters) end early, the rest make up for them.
EXAMPLES_PER_RUN = 32
# The department admin's key carries every department role, so each route gets past its
# role check and runs its department-scoped code (not operator: analytics stay scoped).
DEPARTMENT_ADMIN_ROLES = ["dept_admin", "requester", "auditor", "gateway"]
# Changes that end things (retiring feeds) run last, after everything that reads them.
METHOD_ORDER = {"GET": 0, "POST": 1, "PATCH": 2, "DELETE": 3}
NDJSON = "application/x-ndjson"
MANSCDP = "Application/MANSCDP+xml"  # GB/T 28181 catalogs: a string body, sent as it is


class NdjsonSerializer:
    """Bulk import takes NDJSON, the catalog MANSCDP XML; their schema is a string, sent as
    it is."""

    def as_requests(self, context: Any, value: Any) -> dict[str, Any]:
        return {"data": value.encode() if isinstance(value, str) else orjson.dumps(value)}

    def as_werkzeug(self, context: Any, value: Any) -> dict[str, Any]:
        return self.as_requests(context, value)


@dataclass
class Seeded:
    """What exists before the fuzz: ids to aim at, keys to call with."""

    department_admin_key: str
    known: dict[str, list[str]]


async def seed(base_url: str, app: FastAPI) -> Seeded:
    """The access tests' city, requests in every state, and retrievals through a hook."""
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as client:
        client.app = app  # type: ignore[attr-defined]  # the world reads the gateway's app name
        world: World = await build_world(client)
        issued = await client.post(
            f"/v1/departments/{TRANSPORT}/api-keys",
            json={"name": "fuzz", "roles": DEPARTMENT_ADMIN_ROLES},
        )
        assert issued.status_code == 201, issued.text
        requests_made = [
            await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")]),  # pending
            await world.request(URBAN, feed_ids=[world.feed_id("unconditional")]),  # granted
            await world.request(URBAN, feed_ids=[world.feed_id("not_shared")]),  # denied
            await world.request(TRANSPORT, feed_ids=[world.feed_id("police_camera")]),
        ]
        grants = [
            feed["grant_id"] for made in requests_made for feed in made["feeds"] if feed["grant_id"]
        ]
        assert len(grants) == 2, requests_made
        retrieval = await world.retrieval(URBAN, grants[0])
        assert retrieval.status_code == 200, retrieval.text
        token = retrieval.json()["feeds"][0]["token"]
        allowed = await world.hook(gateway_path(world, "unconditional"), token)
        assert allowed.status_code == 200, allowed.text
        denied = await world.hook(gateway_path(world, "conditional"), token)
        assert denied.status_code == 403, denied.text
        return Seeded(
            department_admin_key=issued.json()["key"],
            known={
                "feed_id": [str(feed["id"]) for feed in world.feeds.values()],
                "request_id": [made["id"] for made in requests_made],
                "grant_id": grants,
                "code": [TRANSPORT, URBAN, POLICE, ENVIRONMENT],
            },
        )


@dataclass
class Fuzzing:
    base_url: str
    session: requests.Session
    known: dict[str, list[str]]
    versions: dict[str, str] = field(default_factory=dict)  # feed id -> its last ETag
    requests_by_operation: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.requests_by_operation.values())

    def aim(self, case: Any, data: st.DataObject) -> None:
        """Points generated ids at things that exist, half the time; asks for CSV sometimes."""
        parameters = case.path_parameters or {}
        for name, pool in self.known.items():
            if name in parameters and data.draw(st.booleans(), label=f"real {name}"):
                parameters[name] = data.draw(st.sampled_from(pool), label=name)
        feed_id = parameters.get("feed_id")
        if case.method in ("PATCH", "DELETE") and feed_id in self.versions:
            if data.draw(st.booleans(), label="current If-Match"):
                case.headers = {**(case.headers or {}), "If-Match": self.versions[feed_id]}
        if case.path.startswith("/v1/analytics/") and data.draw(st.booleans(), label="csv"):
            case.headers = {**(case.headers or {}), "Accept": "text/csv"}

    def call(self, case: Any, bearer: str) -> None:
        label = f"{case.method} {case.path}"
        self.requests_by_operation[label] += 1
        headers = {"Authorization": f"Bearer {bearer}"}
        try:
            response = case.call(
                base_url=self.base_url,
                session=self.session,
                headers=headers,
                timeout=60,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            self.failures[(label, type(error).__name__)] = repr(error)
            return
        self.statuses[response.status_code] += 1
        feed_id = (case.path_parameters or {}).get("feed_id")
        if feed_id and "ETag" in response.headers:
            self.versions[feed_id] = response.headers["ETag"]
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except AssertionError as failure:
            first_line = str(failure).strip().splitlines()[0]
            self.failures.setdefault((label, first_line), str(failure))

    def run(self, operation: Any, bearer: str, method: DataGenerationMethod) -> None:
        strategy = operation.as_strategy(data_generation_method=method)

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_RUN,
            deadline=None,
            derandomize=True,
            database=None,
            phases=(Phase.explicit, Phase.generate),
            suppress_health_check=list(HealthCheck),
            verbosity=hypothesis.Verbosity.quiet,
        )
        @hypothesis.given(case=strategy, data=st.data())
        def fuzz_one(case: Any, data: st.DataObject) -> None:
            self.aim(case, data)
            self.call(case, bearer)

        fuzz_one()


@pytest.fixture
def fuzz_settings(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    sqlite_template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    monkeypatch.setenv("FEEDGRID_STREAM_FLUSH_SECONDS", "0.2")
    settings = make_settings(tmp_path, kafka_bootstrap, topic_prefix, sqlite_template)
    # The fuzz is one identity calling fast: limits high enough never to answer 429 (which
    # is documented, so it would pass, but would stop the fuzz short of the policy code).
    yield settings.model_copy(
        update={
            "embedded_worker": True,
            "rate_limit_requests_per_second": 100_000.0,
            "rate_limit_requests_burst": 100_000,
            "max_body_bytes": 4 * 1024 * 1024,
        }
    )
    close_analytics(settings)


@pytest.fixture
def openapi_3_1() -> Iterator[None]:
    """Schemathesis 3 validates OpenAPI 3.1 (FastAPI's output) behind an experiment flag."""
    schemathesis.experimental.OPEN_API_3_1.enable()
    schemathesis.serializers.register(NDJSON)(NdjsonSerializer)
    schemathesis.serializers.register(MANSCDP)(NdjsonSerializer)
    try:
        yield
    finally:
        schemathesis.serializers.unregister(MANSCDP)
        schemathesis.serializers.unregister(NDJSON)
        schemathesis.experimental.OPEN_API_3_1.disable()


def checks_are_live(operation: Any, base_url: str, session: requests.Session) -> None:
    """The checks do fail: an answer moved to an undocumented status is caught."""
    case = operation.make_case()
    response = case.call(base_url=base_url, session=session, timeout=60)
    case.validate_response(response, checks=CHECKS)
    response.status_code = 418
    with pytest.raises(AssertionError):
        case.validate_response(response, checks=CHECKS)


# Numeric trouble in our code (an overflow, a division by zero) fails the request it happens
# in, so the fuzz reports it: that is how a quadratic duplicate search was found.
@pytest.mark.filterwarnings("error::RuntimeWarning:registry_api")
def test_every_operation_answers_within_its_documented_schema_and_never_5xx(
    fuzz_settings: Settings, openapi_3_1: None
) -> None:
    started = time.monotonic()
    app = build_app(fuzz_settings)
    with serving(app) as base_url, requests.Session() as session:
        seeded = asyncio.run(seed(base_url, app))
        # The seeded retrieval reaches ClickHouse through Kafka and the embedded worker.
        assert (
            asyncio.run(
                wait_for_value(
                    fuzz_settings,
                    "SELECT count() > 0 FROM access_events WHERE type = 'retrieval.started'",
                    1,
                )
            )
            == 1
        )
        schema = schemathesis.from_dict(
            app.openapi(),
            base_url=base_url,
            data_generation_methods=[DataGenerationMethod.positive],
            # The bearer is ours (valid); generated Authorization values would only repeat
            # one request under another name.
            generation_config=GenerationConfig(with_security_parameters=False),
        )
        operations = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result  # every operation's schema is usable
            operations.append(result.ok())
        checks_are_live(schema["/healthz"]["GET"], base_url, session)
        operations.sort(key=lambda operation: METHOD_ORDER.get(operation.method.upper(), 1))
        documented = {
            f"{method.upper()} {path}"
            for path, items in app.openapi()["paths"].items()
            for method in items
        }
        assert {f"{op.method.upper()} {op.path}" for op in operations} == documented

        fuzzing = Fuzzing(base_url, session, seeded.known)
        identities = {"city admin": ADMIN_TOKEN, "department admin": seeded.department_admin_key}
        for operation in operations:
            for bearer in identities.values():
                fuzzing.run(operation, bearer, DataGenerationMethod.positive)

    elapsed = time.monotonic() - started
    print(
        f"\nschemathesis: {fuzzing.total} requests over {len(operations)} operations "
        f"in {elapsed:.0f}s; statuses {dict(sorted(fuzzing.statuses.items()))}"
    )
    assert not fuzzing.failures, "\n\n".join(
        f"== {label}\n{report}" for (label, _), report in sorted(fuzzing.failures.items())
    )
    assert set(fuzzing.requests_by_operation) == documented, "an operation was never called"
    assert fuzzing.total >= MINIMUM_REQUESTS, fuzzing.requests_by_operation
    assert all(status < 500 for status in fuzzing.statuses)
