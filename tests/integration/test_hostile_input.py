"""Hostile bodies and queries are refused with a 4xx and a reason, and change nothing."""

from __future__ import annotations

import httpx
import pytest

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
