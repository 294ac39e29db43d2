"""What reaches the real HTTP server and never a route: a client that hangs up mid-body, one
that never finishes its body, a request the HTTP parser cannot read. None is a server error;
each is answered (when someone is still listening) in the documented JSON error format."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from registry_api.app import create_app
from schemas.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.access_world import build_world
from tests.integration.server_support import serving

pytestmark = pytest.mark.kafka

TRUNCATED_ROUTES = (
    ("/v1/feeds/bulk", "application/geo+json"),
    ("/v1/hooks/mediamtx/auth", "application/json"),
    ("/v1/hooks/nginx-rtmp/on_play", "application/x-www-form-urlencoded"),
)


def _requests_counted(route: str, status: str) -> float:
    labels = {"method": "POST", "route": route, "status": status}
    return REGISTRY.get_sample_value("feedgrid_http_requests_total", labels) or 0.0


def _head(base_url: str, path: str, media_type: str, declared: int) -> tuple[socket.socket, bytes]:
    host, port = base_url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: feedgrid.test\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: {media_type}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    return connection, head


def _answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one answer on the connection."""
    received = b""
    while True:
        if b"\r\n\r\n" in received:
            head, body = received.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            if len(body) >= int(headers.get("content-length", "0")):
                return int(lines[0].split()[1]), headers, body
        chunk = connection.recv(65536)
        assert chunk, f"the connection closed before a whole answer: {received!r}"
        received += chunk


@pytest.mark.parametrize("http", ["h11", "httptools"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_client_hanging_up_mid_body_is_no_server_error(
    settings: Settings, http: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = {route: _requests_counted(route, "500") for route, _ in TRUNCATED_ROUTES}
    gone_before = {route: _requests_counted(route, "499") for route, _ in TRUNCATED_ROUTES}
    with serving(create_app(settings), http=http) as base_url:
        for route, media_type in TRUNCATED_ROUTES:
            connection, head = _head(base_url, route, media_type, 1000)
            connection.sendall(head + b'{"type": "')
            time.sleep(0.2)
            connection.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            _requests_counted(route, "499") == gone_before[route] for route, _ in TRUNCATED_ROUTES
        ):
            time.sleep(0.1)
    for route, _ in TRUNCATED_ROUTES:
        assert _requests_counted(route, "500") == before[route], route
        assert _requests_counted(route, "499") == gone_before[route] + 1, route
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert tracebacks == [], [record.getMessage() for record in tracebacks]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    gone = [record for record in caplog.records if "closed the connection" in record.getMessage()]
    assert len(gone) == len(TRUNCATED_ROUTES), [record.getMessage() for record in caplog.records]
    assert all(record.levelno == logging.INFO for record in gone)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_client_leaving_before_its_answer_is_no_server_error(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A load tool at its end closes connections with requests in flight: whole requests whose
    answers nobody reads. Nothing of it is an ERROR line, a traceback or a 500."""
    caplog.set_level(logging.INFO)
    routes = ("/v1/access-requests", "/v1/heartbeats", "/v1/hooks/mediamtx/auth")
    before = {route: _requests_counted(route, "500") for route in routes}
    body = b'{"purpose": "x", "actions": ["live"], "feed_ids": ["f"]}'
    with serving(create_app(settings)) as base_url:
        for _ in range(5):
            for route in routes:
                connection, head = _head(base_url, route, "application/json", len(body))
                connection.sendall(head + body)
                connection.close()
            connection, _ = _head(base_url, "/", "", 0)
            connection.sendall(
                f"GET /v1/feeds/points HTTP/1.1\r\nHost: t\r\n"
                f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode()
            )
            connection.close()
        time.sleep(1.0)
        # the server still answers
        assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200
    for route in routes:
        assert _requests_counted(route, "500") == before[route], route
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert tracebacks == [], [record.getMessage() for record in tracebacks]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_body_slower_than_the_read_timeout_is_answered_408(settings: Settings) -> None:
    slow = settings.model_copy(update={"body_read_timeout_seconds": 1.0})
    with serving(create_app(slow), http="httptools") as base_url:
        for route, media_type in TRUNCATED_ROUTES:
            connection, head = _head(base_url, route, media_type, 1000)
            started = time.monotonic()
            connection.sendall(head + b'{"type": "')
            status, headers, body = _answer(connection)
            connection.close()
            assert status == 408, (route, body)
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body)["code"] == "body_timeout"
            assert 0.9 < time.monotonic() - started < 5, route


@pytest.mark.parametrize("http", ["h11", "httptools"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_request_the_http_parser_refuses_is_answered_in_the_json_error_format(
    settings: Settings, http: str
) -> None:
    with serving(create_app(settings), http=http) as base_url:
        for header in (b"If-Match: \x01", b"If-Match: a\x7fb", b"If-Match:\x00", b"Bad Header"):
            host, port = base_url.removeprefix("http://").split(":")
            connection = socket.create_connection((host, int(port)), timeout=10)
            connection.sendall(
                b"PATCH /v1/feeds/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
                + ADMIN_TOKEN.encode()
                + b"\r\n"
                + header
                + b"\r\nContent-Length: 2\r\n\r\n{}"
            )
            status, headers, body = _answer(connection)
            connection.close()
            assert headers["content-type"] == "application/json", (header, body)
            assert 400 <= status < 500, (header, status)
            answer = orjson.loads(body)
            assert {"code", "message"} <= set(answer), answer


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_an_empty_or_odd_if_match_is_a_json_refusal(client: httpx.AsyncClient) -> None:
    world = await build_world(client)
    feed_url = f"/v1/feeds/{world.feed_id('unconditional')}"
    for value in ("", " ", "\u00b2", "\u0663", "9223372036854775808", "1" * 40, 'W/"-1"'):
        # DELETE takes If-Match as optional: a blank one is no precondition there
        for method in ("PATCH", "DELETE") if value.strip() else ("PATCH",):
            answer = await client.request(
                method, feed_url, json={"name": "x"} if method == "PATCH" else None,
                headers=[(b"If-Match", value.encode())],
            )  # fmt: skip
            assert answer.status_code in (412, 428), (method, value, answer.status_code)
            assert {"code", "message"} <= set(answer.json()), value
    assert (await client.get(feed_url)).json()["version"] == 1
