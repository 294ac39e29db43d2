"""Hostile bodies and queries are refused with a 4xx and a reason, and change nothing."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from infra.clickhouse_migrations import apply_migrations
from schemas.events import EventType
from schemas.settings import Settings
from tests.integration.access_world import (
    CENTRE,
    ENVIRONMENT,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    camera_body,
)
from tests.integration.hostile_support import changed_tables, registry_state
from tests.integration.streams_support import close_analytics

DEPARTMENT = b'{"code":"lz-x","name":"X","kind":"other"}'

HOSTILE_BODIES = {
    "deeply nested arrays": (b"[" * 100_000 + b"]" * 100_000, "malformed_body"),
    "deeply nested objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "malformed_body"),
    "invalid UTF-8": (b'{"code":"lz-\xff\xfe","name":"x","kind":"other"}', "malformed_body"),
    "NUL escape in a string": (
        b'{"code":"lz-x","name":"a\\u0000b","kind":"other"}',
        "nul_character",
    ),
    "a number with 5,000 digits": (
        b'{"code":"lz-x","name":"x","kind":"other","answer_deadline_days":1' + b"0" * 5000 + b"}",
        "malformed_body",
    ),
    "not JSON at all": (b"hello", "invalid_request"),
    "JSON of the wrong type": (b'["lz-x"]', "invalid_request"),
    "SQL in a field": (
        b'{"code":"x\'; DROP TABLE departments;--","name":"x","kind":"other"}',
        "invalid_request",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
async def test_hostile_body_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, case: str
) -> None:
    body, expected_code = HOSTILE_BODIES[case]
    response = await client.post(
        "/v1/departments", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    answer = response.json()
    assert answer["code"] == expected_code
    assert answer["message"]
    assert (await client.get("/v1/departments")).json() == []


async def test_nul_in_a_query_string_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/departments?name=a%00b")
    assert response.status_code == 400
    assert response.json()["code"] == "nul_character"


async def test_a_well_formed_body_still_works_after_refusals(client: httpx.AsyncClient) -> None:
    refused = await client.post(
        "/v1/departments",
        content=HOSTILE_BODIES["NUL escape in a string"][0],
        headers={"Content-Type": "application/json"},
    )
    assert refused.status_code == 400
    accepted = await client.post(
        "/v1/departments", content=DEPARTMENT, headers={"Content-Type": "application/json"}
    )
    assert accepted.status_code == 201


# ------------------------------------------------------------------ every route that reads a body
#
# Routes are enumerated from the OpenAPI, so a new route with a body is covered (or fails here
# until it is given the ids its path needs). Each gets the hostile bodies above plus oversized
# ones, declared and streamed; each must answer a 4xx and leave the registry as it was.

BODY_LIMIT = 2 * 1024 * 1024  # above the deep-nesting payloads, below the huge geometries
DEEP_ARRAYS = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECTS = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
HOSTILE_PAYLOADS = {
    "deeply nested arrays": DEEP_ARRAYS,
    "deeply nested objects": DEEP_OBJECTS,
    # Deep enough to pass the JSON parser, deep enough to hurt anything recursing on it.
    "objects nested 900 deep": b'{"name":' * 900 + b"1" + b"}" * 900,
    "objects nested 980 deep": b'{"name":' * 980 + b"1" + b"}" * 980,
    "invalid UTF-8": b'{"name":"\xff\xfe\xfa","purpose":"\xc3\x28","path":"\xed\xa0\x80"}',
    "a lone surrogate escape": b'{"name":"\\ud800","purpose":"\\udfff"}',
    "NUL escape in a string": b'{"name":"a\\u0000b"}',
    "a number with 5,000 digits": b'{"name":1' + b"0" * 5000 + b"}",
    "an oversized body": b'{"name":"' + b"x" * (BODY_LIMIT + 10) + b'"}',
}


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """The shared settings with a small body limit, so oversized bodies stay cheap to send."""
    return settings.model_copy(update={"max_body_bytes": BODY_LIMIT})


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await build_world(client)


async def path_ids(world: World) -> dict[str, str]:
    """An existing id for each path parameter, so a refusal is about the body, not a 404."""
    pending = await world.request(URBAN, feed_ids=[world.feed_id("conditional")])
    granted = await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
    subscription = await world.client.post(
        "/v1/subscriptions",
        json={"url": "https://hooks.lz-jtj.example/feedgrid", "kinds": ["grant.expiring"]},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert subscription.status_code == 201, subscription.text
    return {
        "feed_id": world.feed_id("unconditional"),
        "request_id": pending["id"],
        "grant_id": granted["feeds"][0]["grant_id"],
        "code": TRANSPORT,
        "key_id": world.keys[(TRANSPORT, "requester")].split("_", 2)[1],
        "subscription_id": subscription.json()["id"],
        "key": "same_code:" + "0" * 20,  # a duplicate group's key (none: the body is refused first)
    }


def body_routes(app: Any) -> list[tuple[str, str, str]]:
    """(method, path template, media type) of every operation that takes a request body."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            for media_type in content:
                routes.append((method.upper(), path, media_type))
    return sorted(routes)


async def chunks(payload: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The body streamed without a Content-Length, as a chunked upload arrives."""
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


# nginx-rtmp's session-end notification is acknowledged whatever it says (nginx ignores the
# answer); it records a retrieval.ended event, for no grant, and changes nothing else.
SESSION_END_REPORTS = {"/v1/hooks/nginx-rtmp/on_play_done"}


def acceptable_refusal(method: str, path: str, response: httpx.Response) -> bool:
    """A 4xx with the error body; bulk import may instead reject every feature in a 200."""
    if path == "/v1/feeds/bulk" and response.status_code == 200:
        result = response.json()
        return result["created"] == result["updated"] == 0 and bool(result["rejected"])
    if path in SESSION_END_REPORTS and response.status_code == 200:
        return True  # acknowledged (a report, not a request), recorded for no grant
    if not 400 <= response.status_code < 500:
        return False
    if path.startswith("/v1/hooks/") and response.status_code in (401, 403):
        return True  # hooks answer refusals in their media server's own shape
    return {"code", "message"} <= set(response.json())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_body_route_refuses_hostile_bodies_and_changes_nothing(world: World) -> None:
    ids = await path_ids(world)
    routes = body_routes(world.client.app)  # type: ignore[attr-defined]
    assert len(routes) >= 15, routes
    before = await registry_state(
        world.runtime, (EventType.RETRIEVAL_DENIED, EventType.RETRIEVAL_ENDED)
    )
    failures = []
    for method, template, media_type in routes:
        url = template.format(**ids)
        headers = {"Content-Type": media_type, "If-Match": "1"}
        for label, payload in HOSTILE_PAYLOADS.items():
            attempts = {"declared": payload}
            if label == "an oversized body":
                attempts["streamed"] = chunks(payload)  # type: ignore[assignment]
            for how, content in attempts.items():
                response = await world.client.request(method, url, content=content, headers=headers)
                where = f"{method} {template} ({media_type}): {label}, {how}"
                if not acceptable_refusal(method, template, response):
                    failures.append(f"{where}: HTTP {response.status_code} {response.text[:150]}")
                elif label == "an oversized body" and response.status_code != 413:
                    failures.append(f"{where}: {response.status_code}, not 413")
    assert not failures, "\n".join(failures)
    after = await registry_state(
        world.runtime, (EventType.RETRIEVAL_DENIED, EventType.RETRIEVAL_ENDED)
    )
    assert changed_tables(before, after) == []


# ------------------------------------------------------------------ huge geometries


def ring(vertices: int, centre: tuple[float, float] = CENTRE, radius: float = 0.01) -> list[Any]:
    """A closed, valid ring of ``vertices`` distinct positions (plus the closing one)."""
    points = [
        [
            round(centre[0] + radius * math.cos(k / vertices * math.tau), 7),
            round(centre[1] + radius * math.sin(k / vertices * math.tau), 7),
        ]
        for k in range(vertices)
    ]
    return [*points, points[0]]


def polygon(vertices: int) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [ring(vertices)]}


def many_holes(holes: int) -> dict[str, Any]:
    """A square with ``holes`` tiny square holes: few vertices each, many rings."""
    shell = [[103.0, 36.0], [104.0, 36.0], [104.0, 37.0], [103.0, 37.0], [103.0, 36.0]]
    rings = [shell]
    for index in range(holes):
        x, y = 103.01 + 0.009 * (index % 100), 36.01 + 0.009 * (index // 100)
        rings.append([[x, y], [x + 0.001, y], [x + 0.001, y + 0.001], [x, y + 0.001], [x, y]])
    return {"type": "Polygon", "coordinates": rings}


def multipolygon(parts: int, vertices_each: int) -> dict[str, Any]:
    return {
        "type": "MultiPolygon",
        "coordinates": [
            [ring(vertices_each, (CENTRE[0] + 0.05 * index, CENTRE[1]), 0.01)]
            for index in range(parts)
        ],
    }


HUGE_SEARCH_AREAS = {
    "a polygon of 10,001 vertices": (polygon(10_000), "at most 10000"),
    "a polygon of 50,000 vertices": (polygon(50_000), "at most 10000"),
    "a multipolygon of 11 x 1,000 vertices": (multipolygon(11, 1_000), "at most 10000"),
    "a polygon with 101 rings": (many_holes(100), "coordinates"),
    "coordinates nested too deep": (
        {"type": "Polygon", "coordinates": [[[[[CENTRE[0], CENTRE[1]]]]]]},
        "coordinates",
    ),
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_huge_geometries_are_refused_by_the_vertex_caps_and_change_nothing(
    world: World,
) -> None:
    before = await registry_state(world.runtime)
    failures = []
    started = time.monotonic()
    for label, (area, reason) in HUGE_SEARCH_AREAS.items():
        bodies = {
            "POST /v1/feeds/search": ("/v1/feeds/search", {"geometry": area}),
            "POST /v1/access-requests (area)": (
                "/v1/access-requests",
                {
                    "feed_ids": [world.feed_id("unconditional")],
                    "purpose": "traffic management",
                    "actions": ["live"],
                    "area": area,
                },
            ),
            "POST /v1/access-requests (selection)": (
                "/v1/access-requests",
                {"selection": {"geometry": area}, "purpose": "p", "actions": ["live"]},
            ),
        }
        for where, (url, body) in bodies.items():
            response = await world.client.post(
                url, json=body, headers=world.auth(URBAN, "requester")
            )
            if response.status_code != 422 or reason not in response.text:
                failures.append(f"{where}, {label}: {response.status_code} {response.text[:200]}")
    coverage = camera_body(TRANSPORT, 77, {"class": "unconditional"})
    for vertices in (1_001, 50_000):
        coverage["coverage"] = polygon(vertices)
        response = await world.client.post("/v1/feeds", json=coverage)
        if response.status_code != 422 or "at most 1000" not in response.text:
            failures.append(f"POST /v1/feeds coverage {vertices}: {response.status_code}")
    assert not failures, "\n".join(failures)
    # Refused by counting, not by building the shapes: a few seconds, not minutes.
    assert time.monotonic() - started < 60
    assert changed_tables(before, await registry_state(world.runtime)) == []


# ------------------------------------------------------------------ invalid UTF-8 outside bodies


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_invalid_utf8_in_query_path_and_header_is_a_4xx_or_a_literal(world: World) -> None:
    before = await registry_state(world.runtime)
    client = world.client
    as_literal = await client.get("/v1/feeds?q=%FF%FE")
    assert as_literal.status_code in (200, 422), as_literal.text
    if as_literal.status_code == 200:
        assert as_literal.json()["items"] == []
    for url in ("/v1/feeds/%FF%FE", "/v1/grants/%C3%28", "/v1/access-requests/%ED%A0%80"):
        response = await client.get(url)
        assert response.status_code in (404, 422), (url, response.status_code)
    for url in ("/v1/audit?event_type=%FF", "/v1/analytics/usage?owner_department=%FF"):
        response = await client.get(url)
        assert response.status_code in (200, 422), (url, response.status_code)
    for header in (b"Bearer \xff\xfe\xfa", b"Bearer fgk_\xff_\xfe", b"\xff\xfe"):
        response = await client.get("/v1/grants", headers={b"Authorization": header})
        assert response.status_code == 401, (header, response.text)
    assert changed_tables(before, await registry_state(world.runtime)) == []


# ------------------------------------------------------------------ text that is not Unicode
#
# JSON may spell a lone UTF-16 surrogate (``"\ud800"``); no database can store it as text.
# In bodies that are otherwise valid, it must be refused before it reaches a table or a query.

LONE_SURROGATE = "\\ud800"


def surrogate_bodies(world: World, ids: dict[str, str]) -> list[tuple[str, str, Any, str]]:
    """(method, url, body with @S@ where the surrogate goes, who calls) for every text field
    that is stored or looked up."""
    feed = camera_body(TRANSPORT, 88, {"class": "unconditional"})
    feed["name"] = "@S@"
    feed_id = ids["feed_id"]
    zlm = {"schema": "rtsp", "app": "live", "stream": "@S@", "params": "token=@S@", "ip": "@S@"}
    return [
        ("POST", "/v1/departments", {"code": "lz-y", "name": "@S@", "kind": "other"}, "admin"),
        (
            "POST",
            f"/v1/departments/{TRANSPORT}/api-keys",
            {"name": "@S@", "roles": ["requester"]},
            "admin",
        ),
        ("POST", "/v1/feeds", feed, "admin"),
        ("PATCH", f"/v1/feeds/{feed_id}", {"name": "@S@"}, "admin"),
        ("PATCH", f"/v1/feeds/{feed_id}", {"@S@": 1}, "admin"),
        ("POST", "/v1/feeds/search", {"q": "@S@"}, "admin"),
        ("POST", "/v1/feeds/search", {"tag": "@S@"}, "admin"),
        ("POST", "/v1/heartbeats", {"items": [{"feed_id": "@S@"}]}, "gateway"),
        ("POST", "/v1/heartbeats", {"items": [{"feed_id": feed_id}], "reporter": "@S@"}, "gateway"),
        (
            "POST",
            "/v1/access-requests",
            {"feed_ids": [feed_id], "purpose": "@S@", "actions": ["live"]},
            "requester",
        ),
        (
            "POST",
            "/v1/access-requests",
            {"feed_ids": ["@S@"], "purpose": "traffic management", "actions": ["live"]},
            "requester",
        ),
        ("POST", f"/v1/access-requests/{ids['request_id']}/deny", {"comment": "@S@"}, "owner"),
        ("POST", f"/v1/grants/{ids['grant_id']}/revoke", {"reason": "@S@"}, "owner"),
        (
            "POST",
            "/v1/hooks/mediamtx/auth",
            {"action": "read", "path": "live/@S@", "token": "@S@"},
            "gateway",
        ),
        ("POST", "/v1/hooks/zlmediakit/on_play", zlm, "gateway"),
        ("POST", "/v1/hooks/zlmediakit/on_flow_report", zlm, "gateway"),
    ]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_lone_surrogates_in_valid_bodies_are_refused_and_change_nothing(
    world: World,
) -> None:
    ids = await path_ids(world)
    pending = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
    ids["request_id"] = pending["id"]
    callers = {
        "admin": {},  # the client's own city-admin token
        "requester": world.auth(URBAN, "requester"),
        "owner": world.auth(TRANSPORT, "dept_admin"),
        "gateway": world.auth(TRANSPORT, "gateway"),
    }
    before = await registry_state(world.runtime)
    failures = []
    for method, url, body, caller in surrogate_bodies(world, ids):
        content = orjson.dumps(body).replace(b"@S@", LONE_SURROGATE.encode())
        headers = {"Content-Type": "application/json", **callers[caller]}
        try:
            response = await world.client.request(method, url, content=content, headers=headers)
        except Exception as error:  # the in-process transport raises what a server answers 500
            failures.append(f"{method} {url} {body}: 500 ({type(error).__name__})")
            continue
        if not 400 <= response.status_code < 500:
            failures.append(f"{method} {url} {body}: {response.status_code} {response.text[:150]}")
    assert not failures, "\n".join(failures)
    assert changed_tables(before, await registry_state(world.runtime)) == []


# ------------------------------------------------------------------ times at the calendar's ends

EXTREME_TIMES = (
    "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
    "9999-12-31T23:59:59",  # no zone
)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_times_at_the_ends_of_the_calendar_are_refused_or_answered_never_5xx(
    world: World,
) -> None:
    """Every date-time parameter and field, at year 1 and year 9999: a 4xx, or an answer."""
    settings = world.runtime.settings
    await asyncio.to_thread(apply_migrations, settings.clickhouse_url)  # `feedgrid migrate`
    requester = world.auth(URBAN, "requester")
    before = await registry_state(world.runtime)
    failures = []
    for moment in EXTREME_TIMES:
        calls = {
            "access request valid_from": world.client.post(
                "/v1/access-requests",
                json={
                    "feed_ids": [world.feed_id("not_shared")],
                    "purpose": "traffic management",
                    "actions": ["live"],
                    "valid_from": moment,
                    "duration_minutes": 60 * 24 * 366,
                },
                headers=requester,
            ),
            "heartbeat seen_at": world.client.post(
                "/v1/heartbeats",
                json={"items": [{"feed_id": world.feed_id("unconditional"), "seen_at": moment}]},
                headers=world.auth(TRANSPORT, "gateway"),
            ),
            "access requests before": world.client.get(
                "/v1/access-requests", params={"before": moment}, headers=requester
            ),
            "audit since": world.client.get("/v1/audit", params={"since": moment}),
            "audit until": world.client.get("/v1/audit", params={"until": moment}),
            "analytics from": world.client.get("/v1/analytics/usage", params={"from": moment}),
            "analytics to": world.client.get("/v1/analytics/decisions", params={"to": moment}),
        }
        for label, call in calls.items():
            try:
                response = await call
            except Exception as error:  # the in-process transport raises what a server answers 500
                failures.append(f"{label} = {moment}: 500 ({type(error).__name__}: {error})")
                continue
            refused = 400 <= response.status_code < 500
            if response.status_code >= 500 or (label.startswith("access request ") and not refused):
                failures.append(f"{label} = {moment}: {response.status_code} {response.text}")
    assert not failures, "\n".join(failures)
    # No request can be granted a window at year 1 or past year 9999; a heartbeat may only
    # move a feed's liveness.
    after = await registry_state(world.runtime)
    close_analytics(settings)
    assert [name for name in changed_tables(before, after) if name != "feeds"] == []


# ------------------------------------------------------------------ cheap requests, costly work


async def test_a_vanishing_duplicate_distance_is_refused_not_squared(world: World) -> None:
    """distance_m=5e-324 is "> 0", but made every nearby-search cell overflow into one: the
    pairs compared grew with the square of the registry (6,000 feeds: 16 s, a city: no memory).
    """
    for tiny in ("5e-324", "1e-300", "0.000001", "0.09"):
        response = await world.client.get("/v1/catalog/duplicates", params={"distance_m": tiny})
        assert response.status_code == 422, (tiny, response.text)
    started = time.monotonic()
    smallest = await world.client.get("/v1/catalog/duplicates", params={"distance_m": "0.1"})
    assert smallest.status_code == 200, smallest.text
    assert time.monotonic() - started < 30


# ------------------------------------------------------------------ integers past the stores' range

INT64_MAX = 2**63 - 1
INTEGER_EDGES = (2**31, 2**53, 2**53 + 1, INT64_MAX, 2**63, 2**64, -1, -(2**63) - 1)


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def integer_schemas(
    document: dict[str, Any], schema: dict[str, Any], where: str, seen: frozenset[str] = frozenset()
) -> list[tuple[str, dict[str, Any]]]:
    """Every integer a client may send under ``schema``, with where it is."""
    if "$ref" in schema:
        if schema["$ref"] in seen:
            return []
        seen = seen | {schema["$ref"]}
        local_defs = schema.get("$defs")
        schema = _resolve(document, schema)
        if local_defs:
            schema = {**schema, "$defs": local_defs}
    found = [(where, schema)] if schema.get("type") == "integer" else []
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for index, option in enumerate(schema.get(key, [])):
            found += integer_schemas(document, option, f"{where}[{key}{index}]", seen)
    for name, option in (schema.get("properties") or {}).items():
        found += integer_schemas(document, option, f"{where}.{name}", seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += integer_schemas(document, schema[key], f"{where}.{key}", seen)
    return found


def request_integers(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(operation, where, schema) of every integer in every parameter and request body."""
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            operation_name = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                where = f"{parameter['in']} {parameter['name']}"
                for place, schema in integer_schemas(document, parameter["schema"], where):
                    found.append((operation_name, place, schema))
            for media_type, content in (
                (operation.get("requestBody") or {}).get("content", {}).items()
            ):
                schema = content.get("schema", {})
                defs = schema.get("$defs")
                document_with_defs = {**document, "$defs": defs} if defs else document
                for place, integer in integer_schemas(document_with_defs, schema, media_type):
                    found.append((operation_name, place, integer))
    return found


def _bounded(schema: dict[str, Any]) -> bool:
    # FastAPI writes bounds as floats: 2**63 - 1 reads 2.0**63, which is what float() makes of it
    highest = schema.get("maximum", schema.get("exclusiveMaximum"))
    lowest = schema.get("minimum", schema.get("exclusiveMinimum"))
    return (
        highest is not None
        and lowest is not None
        and highest <= float(INT64_MAX)
        and lowest >= float(-INT64_MAX - 1)
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_integer_a_client_sends_is_bounded_to_64_bits_in_the_openapi_document(
    settings: Settings,
) -> None:
    """Drawn from the OpenAPI document, so a parameter or field added later is covered."""
    from registry_api.app import create_app

    document = create_app(settings).openapi()
    integers = request_integers(document)
    assert any(where == "query after_seq" for _, where, _ in integers), integers
    assert any("totalBytes" in where for _, where, _ in integers), integers
    unbounded = [f"{operation}: {where}" for operation, where, schema in integers
                 if not _bounded(schema)]  # fmt: skip
    assert not unbounded, "\n".join(unbounded)


def _parameter_calls(document: dict[str, Any], ids: dict[str, str]) -> list[tuple[str, str, str]]:
    """(method, url template with ids, parameter name) of every integer query parameter."""
    calls = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query":
                    continue
                if not integer_schemas(document, parameter["schema"], parameter["name"]):
                    continue
                calls.append((method.upper(), path.format(**ids), parameter["name"]))
    return calls


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_every_integer_parameter_at_the_storage_edges_is_refused_or_answered_never_5xx(
    world: World,
) -> None:
    await asyncio.to_thread(apply_migrations, world.runtime.settings.clickhouse_url)
    ids = await path_ids(world)
    document = world.client.app.openapi()  # type: ignore[attr-defined]
    calls = _parameter_calls(document, ids)
    assert ("GET", "/v1/audit", "after_seq") in calls, calls
    failures = []
    for method, url, name in calls:
        for edge in INTEGER_EDGES:
            response = await world.client.request(method, url, params={name: str(edge)})
            if response.status_code >= 500 or (
                response.status_code >= 400 and {"code", "message"} > set(response.json())
            ):
                failures.append(f"{method} {url}?{name}={edge}: {response.status_code}")
    audit = await world.client.get("/v1/audit", params={"after_seq": str(2**63)})
    assert audit.status_code == 422 and audit.json()["code"] == "invalid_request"
    close_analytics(world.runtime.settings)
    assert not failures, "\n".join(failures)


def _minimal_body(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The required fields of a body, each given a plain value of its type."""
    schema = _resolve(document, schema)
    plain = {"string": "x", "integer": 1, "number": 1.0, "boolean": True}
    body: dict[str, Any] = {}
    for name in schema.get("required", []):
        kind = _resolve(document, schema["properties"][name]).get("type", "string")
        body[name] = plain.get(kind, "x")
    return body


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_integer_field_of_every_hook_at_the_storage_edges_is_refused_never_stored(
    world: World,
) -> None:
    """Media servers' bodies are what a hostile gateway controls: each integer and number
    field at each edge, in an otherwise valid body, is a 4xx; nothing reaches the audit."""
    document = world.client.app.openapi()  # type: ignore[attr-defined]
    gateway = world.auth(TRANSPORT, "gateway")
    failures = []
    tried = 0
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/hooks/"):
            continue
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            if schema is None:
                continue
            schema = _resolve(document, schema)
            for field_name, field_schema in schema.get("properties", {}).items():
                kinds = {option.get("type") for option in [field_schema,
                         *field_schema.get("anyOf", [])]}  # fmt: skip
                if not kinds & {"integer", "number"}:
                    continue
                for edge in (2**63, 2**64, -1, -(2**63) - 1, 10**400):
                    body = {**_minimal_body(document, schema), field_name: edge}
                    raw = orjson.dumps({**body, field_name: 0}).replace(b":0", f":{edge}".encode())
                    response = await world.client.request(
                        method, path, content=raw,
                        headers={**gateway, "Content-Type": "application/json"},
                    )  # fmt: skip
                    tried += 1
                    if not 400 <= response.status_code < 500:
                        failures.append(f"{path} {field_name}={edge}: {response.status_code}")
    assert tried >= 15, tried
    assert not failures, "\n".join(failures)
    await world.runtime.access.hook_events.flush()
    assert (
        world.runtime.access.hook_events.refused == type(world.runtime.access.hook_events.refused)()
    )
