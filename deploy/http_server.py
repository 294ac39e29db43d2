"""The HTTP server FeedGrid runs under: uvicorn, with its own refusals in FeedGrid's format.

uvicorn answers a request it cannot parse (a control character in a header value, a broken
request line) itself, before any application code runs, with ``400 text/plain``. Clients
rely on every refusal being the documented JSON error body, so the protocol classes here send
that instead; everything else is uvicorn's.
"""

from __future__ import annotations

from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MALFORMED_REQUEST = orjson.dumps(
    {
        "code": "malformed_request",
        "message": "the request could not be parsed as HTTP/1.1 (a control character in a "
        "header, a broken request line or header)",
        "details": None,
    }
)


def _refusal_bytes(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    content = [b"HTTP/1.1 400 Bad Request\r\n"]
    for name, value in default_headers:
        content.extend([name, b": ", value, b"\r\n"])
    content.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(MALFORMED_REQUEST)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            MALFORMED_REQUEST,
        ]
    )
    return b"".join(content)


class JsonRefusalHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        self.transport.write(_refusal_bytes(self.server_state.default_headers))
        self.transport.close()


class JsonRefusalH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        # Written raw like the httptools variant: h11's state machine is already in error.
        self.transport.write(_refusal_bytes(self.server_state.default_headers))
        self.transport.close()


def http_protocol(implementation: str = "httptools") -> type[Any]:
    """uvicorn's ``http`` setting: httptools (fast, the default) or h11 (pure Python)."""
    if implementation == "h11":
        return JsonRefusalH11Protocol
    return JsonRefusalHttpToolsProtocol


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for FeedGrid: JSON refusals, no access log (metrics count)."""
    options.setdefault("access_log", False)
    implementation = options.pop("http_implementation", "httptools")
    return uvicorn.Config(app, http=http_protocol(implementation), **options)
