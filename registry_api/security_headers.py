"""Response headers that keep browsers from doing more with an answer than it is for.

Every answer is ``nosniff`` (a JSON body is never run as a script or styled as CSS). JSON
answers get a policy that allows nothing at all: they are data, never a page. The docs page
gets one that allows exactly what it loads: the Swagger UI bundle and stylesheet from the CDN
FastAPI serves them from, its one inline script by hash (computed from the page itself, so it
follows FastAPI's template), and fetches of /openapi.json from here.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOTHING_ALLOWED = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SWAGGER_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"
FASTAPI_FAVICON = "https://fastapi.tiangolo.com/img/favicon.png"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def docs_policy(app: FastAPI) -> str:
    """The policy of the page FastAPI serves at ``docs_url`` (rendered as FastAPI renders it;
    served at the root path, as FeedGrid is)."""
    page = bytes(
        get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        ).body
    ).decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'none'; script-src {SWAGGER_CDN} {hashes}; style-src {SWAGGER_CDN}; "
        f"img-src {FASTAPI_FAVICON} data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, docs_path: str, docs_policy: str) -> None:
        self.app = app
        self.docs_path = docs_path
        self.docs_policy = docs_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_docs = scope.get("path") == self.docs_path

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                content_type = headers.get("content-type", "")
                if is_docs:
                    headers["Content-Security-Policy"] = self.docs_policy
                elif content_type.startswith("application/") and "json" in content_type:
                    headers.setdefault("Content-Security-Policy", NOTHING_ALLOWED)
            await send(message)

        await self.app(scope, receive, send_with_headers)
