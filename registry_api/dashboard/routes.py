"""``GET /dashboard``: a self-contained page (no CDN, no web fonts: the city network is
offline) that draws the registry and its analytics from the API's own endpoints.

The page and its assets ship as package data in ``static/`` and are read once. Every answer
carries a strict Content-Security-Policy (same origin only, no inline script or style), so a
token pasted into the page can only ever be sent back to this API. ``GET /v1/whoami`` tells
the page who the pasted token belongs to.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, Field

from registry_api.analytics.routes import analytics_scope
from registry_api.dependencies import PrincipalDep
from registry_api.errors import Forbidden, NotFound
from schemas.identity import Role

router = APIRouter()

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files, and a new release must show at once: revalidate every time.
    "Cache-Control": "no-cache",
}
# The only files served, with their types: nothing else in the package is reachable.
ASSET_TYPES = {
    "dashboard.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "feedmap.js": "text/javascript; charset=utf-8",
    "panels.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE = "index.html"


@cache
def _static_file(name: str) -> bytes:
    return resources.files("registry_api.dashboard").joinpath("static", name).read_bytes()


def _static_response(name: str, media_type: str) -> Response:
    return Response(_static_file(name), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> Response:
    return _static_response(PAGE, "text/html; charset=utf-8")


@router.get("/dashboard/assets/{name}", include_in_schema=False)
async def dashboard_asset(name: Annotated[str, Path(max_length=64)]) -> Response:
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        raise NotFound(f"the dashboard has no asset {name!r}", code="no_such_asset")
    return _static_response(name, media_type)


class WhoAmI(BaseModel):
    """The caller as the API sees it."""

    subject: str = Field(description="Who holds the token (API key name, JWT subject)")
    department: str | None = Field(description="The caller's department; none for the city")
    roles: list[Role]
    analytics_scope: str | None = Field(
        description="'city' (operators, the city admin), the department whose analytics rows "
        "the caller reads, or none when analytics are closed to it"
    )


@router.get("/v1/whoami", response_model=WhoAmI, tags=["identity"], summary="Who is calling")
async def whoami(principal: PrincipalDep) -> WhoAmI:
    """The identity behind the bearer token: for clients (the dashboard) to say who is
    signed in and which panels the caller may read."""
    try:
        scope: str | None = analytics_scope(principal).label
    except Forbidden:
        scope = None
    return WhoAmI(
        subject=principal.subject,
        department=principal.department,
        roles=sorted(principal.roles),
        analytics_scope=scope,
    )
