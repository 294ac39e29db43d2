"""HTTP metrics and the request-size guard (logs: ``infra.structured_logging``)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import nullcontext

import orjson
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.foreground import serving

log = logging.getLogger("feedgrid.http")

# What the metrics count a request whose client hung up before its body arrived as (nginx's
# "client closed request"): not a server error, and no answer anyone receives.
CLIENT_CLOSED = 499

HTTP_REQUESTS = Counter(
    "feedgrid_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "feedgrid_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


# Requests the process's background loops do not give way to (infra/foreground): probes and
# scrapes, and the devices' liveness reports, which are what those loops work through (a city
# reports all the time: giving way to its gateways would halve the stream worker for good).
NOT_FOREGROUND = frozenset({"/healthz", "/readyz", "/metrics", "/v1/heartbeats"})


class RequestMetricsMiddleware:
    """Counts and times every request by its route template (not the raw path), and keeps the
    process's count of requests in flight (``infra.foreground``), but for ``NOT_FOREGROUND``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        counted = serving() if scope.get("path") not in NOT_FOREGROUND else nullcontext()
        try:
            with counted:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope.get("method", "GET")
            status = status_holder["status"]
            if scope.get("state", {}).get("client_closed"):
                status = CLIENT_CLOSED
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - started)


NUL_IN_BODY = "the request body contains a NUL character (\\u0000)"


class RequestGuardMiddleware:
    """Refuses, before any route runs, what no route should ever see.

    - bodies over the size limit: 413, without reading them into memory;
    - the NUL character, in the query string or as a JSON ``\\u0000`` escape: 400. No text
      field has a use for it, and PostgreSQL cannot store it in text columns;
    - a body that has not arrived within ``body_seconds`` of the request: 408. A client
      trickling bytes would otherwise hold a connection and a task for as long as it likes.

    A client that hangs up before its body is complete is no server error: one info line,
    counted under 499 by the metrics, and no traceback.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, body_seconds: float = 120.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b"") or "\x00" in scope.get("path", ""):
            await _send_refusal(send, 400, "nul_character", "the request contains a NUL character")
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_too_large(send, self.max_bytes)
            return
        received = 0
        tail = b""
        body_deadline = asyncio.get_running_loop().time() + self.body_seconds
        state = scope.setdefault("state", {})

        body_complete = False

        async def guarded_receive() -> Message:
            nonlocal received, tail, body_complete
            if body_complete:  # later reads wait for a disconnect (streamed answers): no limit
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise _Refused(408, body_timeout_message(self.body_seconds)) from None
            if message["type"] == "http.disconnect":
                state["client_closed"] = True
            elif message["type"] == "http.request":
                body_complete = not message.get("more_body", False)
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    raise _Refused(413, too_large_message(self.max_bytes))
                if b"\\u0000" in tail + chunk:
                    # Routes turn a failed body read into a 400; this tells them why.
                    state["body_refusal"] = NUL_IN_BODY
                    raise _Refused(400, NUL_IN_BODY)
                tail = chunk[-5:]
            return message

        try:
            await self.app(scope, guarded_receive, send)
        except _Refused as refused:
            if refused.status == 413:
                await _send_too_large(send, self.max_bytes)
            elif refused.status == 408:
                await _send_refusal(send, 408, "body_timeout", refused.detail)
            else:
                await _send_refusal(send, 400, "nul_character", NUL_IN_BODY)
        except ClientDisconnect:
            state["client_closed"] = True
        if state.get("client_closed"):
            log.info(
                "client closed the connection before its request body was complete",
                extra={"method": scope.get("method"), "path": scope.get("path")},
            )


class _Refused(HTTPException):
    """An HTTPException, so routes that read the body pass it on as it is: FastAPI turns any
    other exception raised while reading a body into a 400, which would answer an oversized
    streamed body with "malformed" instead of 413."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status_code=status, detail=message)
        self.status = status


def body_timeout_message(seconds: float) -> str:
    return f"the request body did not arrive within {seconds:g} seconds"


def too_large_message(limit: int) -> str:
    return f"request body exceeds {limit} bytes"


async def _send_too_large(send: Send, limit: int) -> None:
    await _send_refusal(send, 413, "payload_too_large", too_large_message(limit))


async def _send_refusal(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"code": code, "message": message, "details": None})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
