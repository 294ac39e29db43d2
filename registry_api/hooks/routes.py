"""Authorization hooks for media servers, each in the protocol its server speaks.

The media server authenticates with a gateway API key, as ``Authorization: Bearer`` or, for
servers that can only be given a URL, as ``?access_token=`` in the hook URL. ``?server=<name>``
names the media server (an entry of ``FEEDGRID_MEDIA_SERVERS``): the sessions its play hooks
allow are recorded under their grant, and cut through that server's control API when the grant
is revoked or ends (``registry_api/enforcement``).
"""

from __future__ import annotations

from typing import Annotated, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry_api.dependencies import CITY_ADMIN, resolve_principal
from registry_api.errors import Forbidden, Unauthorized
from registry_api.hooks.service import Attempt, RetrievalGate, Verdict
from registry_api.identity.principal import Principal
from registry_api.ratelimit import enforce
from registry_api.runtime import Runtime
from schemas.identity import Role
from schemas.numbers import Port, StoredCount, StoredSeconds

router = APIRouter(prefix="/v1/hooks", tags=["media-server hooks"])

JSON = "application/json"
ModelT = TypeVar("ModelT", bound=BaseModel)
MEDIAMTX_ACTIONS = {"read": "live", "playback": "playback"}
ZLM_ALLOW = orjson.dumps({"code": 0, "msg": "success"})


async def gateway_identity(request: Request) -> Principal:
    """The media server's identity. Async and session-free on the hot path: hooks are called
    thousands of times a second, and a sync dependency would cost a thread-pool hop each."""
    runtime: Runtime = request.app.state.runtime
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    token = token or request.query_params.get("access_token", "")
    if not token:
        raise Unauthorized("a gateway API key is required", code="missing_token")
    principal = await resolve_principal(runtime, token)
    if principal is None:
        raise Unauthorized("the gateway API key is not valid", code="invalid_token")
    if principal is CITY_ADMIN:  # the bootstrap token: no role check, no hook budget
        return principal
    if not principal.has_any(Role.gateway):
        raise Forbidden("hooks need the gateway role", code="role_required")
    limiter = request.app.state.rate_limiters.get("hooks")
    if limiter is not None:
        enforce(limiter, principal, "hooks")
    return principal


Gateway = Annotated[Principal, Depends(gateway_identity)]


async def get_gate(request: Request) -> RetrievalGate:
    gate: RetrievalGate | None = getattr(request.app.state, "retrieval_gate", None)
    if gate is None:
        runtime = request.app.state.runtime
        gate = RetrievalGate(
            runtime.access,
            runtime.sessions,
            feed_revisions=runtime.feed_index,
            recorder=runtime.enforcement.recorder,
        )
        request.app.state.retrieval_gate = gate
    return gate


Gate = Annotated[RetrievalGate, Depends(get_gate)]
ServerName = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9._:-]{1,64}$",
        description="The media server calling, by its name in FEEDGRID_MEDIA_SERVERS: its "
        "control API cuts the session when the grant is revoked or ends",
    ),
]


def _token_in_query(query: str) -> str | None:
    for key, value in parse_qsl(query.lstrip("?"), keep_blank_values=False):
        if key in ("token", "jwt"):
            return value
    return None


def _refusal(verdict: Verdict, status_code: int = 403) -> Response:
    body = orjson.dumps({"code": verdict.code, "message": verdict.message})
    return Response(body, status_code=status_code, media_type=JSON)


# ------------------------------------------------------------------------------ MediaMTX


class MediaMtxAuth(BaseModel):
    """What MediaMTX posts with ``authMethod: http``."""

    model_config = ConfigDict(extra="ignore")

    user: str = ""
    password: str = ""
    token: str = ""
    ip: str = ""
    action: str
    path: str = ""
    protocol: str = ""
    id: str | None = None
    query: str = ""


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    """Validates the raw body in one pass (pydantic-core JSON); FastAPI's body machinery costs
    more than the whole decision on this path."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


def body_schema(model: type[BaseModel]) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": model.model_json_schema()}},
        }
    }


@router.post(
    "/mediamtx/auth",
    summary="MediaMTX authMethod http: 2xx allows, 401 asks, 403 denies",
    openapi_extra=body_schema(MediaMtxAuth),
    response_class=Response,  # an allowed check answers 200 with no body
)
async def mediamtx_auth(
    request: Request, gate: Gate, gateway: Gateway, server: ServerName = None
) -> Response:
    body = await parse_body(request, MediaMtxAuth)
    token = body.token or _token_in_query(body.query) or body.password
    if not token and not body.user:
        # No credentials at all: 401 makes RTSP clients retry with them. Not an attempt yet.
        return Response(
            orjson.dumps({"code": "missing_token", "message": "credentials required"}),
            status_code=401,
            media_type=JSON,
        )
    attempt = Attempt(
        server="mediamtx",
        token=token or None,
        action=MEDIAMTX_ACTIONS.get(body.action),
        path=body.path,
        protocol=body.protocol or None,
        client_ip=body.ip or None,
        session_id=body.id or None,
        media_server=gateway.subject,
        server_name=server,
    )
    verdict = await gate.check(attempt)
    return Response(status_code=200) if verdict.allowed else _refusal(verdict)


# ------------------------------------------------------------------------------ ZLMediaKit


class ZlmOnPlay(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scheme: str = Field("", alias="schema", description="rtsp, rtmp, hls, ...")
    vhost: str = ""
    app: str
    stream: str
    params: str = ""
    ip: str = ""
    port: Port | None = None
    id: str = ""
    mediaServerId: str = ""  # noqa: N815 - ZLMediaKit's field name


class ZlmFlowReport(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Bounded here: a number the audit log cannot store must be refused before it is queued.
    totalBytes: StoredCount = 0  # noqa: N815
    duration: StoredSeconds = 0.0
    player: bool = True
    ip: str = ""
    id: str = ""
    app: str
    stream: str
    params: str = ""
    mediaServerId: str = ""  # noqa: N815


def _zlm_attempt(
    body: ZlmOnPlay | ZlmFlowReport, gateway: Principal, protocol: str | None, server: str | None
) -> Attempt:
    return Attempt(
        server="zlmediakit",
        token=_token_in_query(body.params),
        action="live",
        path=f"{body.app}/{body.stream}",
        protocol=protocol,
        client_ip=body.ip or None,
        session_id=body.id or None,
        media_server=body.mediaServerId or gateway.subject,
        server_name=server or body.mediaServerId or None,
    )


@router.post(
    "/zlmediakit/on_play",
    summary='ZLMediaKit on_play: {"code": 0} allows',
    openapi_extra=body_schema(ZlmOnPlay),
)
async def zlmediakit_on_play(
    request: Request, gate: Gate, gateway: Gateway, server: ServerName = None
) -> Response:
    # Parsed by pydantic-core like MediaMTX's: it refuses lone surrogates ("\ud800"), which
    # the standard JSON parser lets through to the database lookups of the path.
    body = await parse_body(request, ZlmOnPlay)
    verdict = await gate.check(_zlm_attempt(body, gateway, body.scheme or None, server))
    if verdict.allowed:
        return Response(ZLM_ALLOW, media_type=JSON)
    return Response(orjson.dumps({"code": -1, "msg": verdict.code}), media_type=JSON)


@router.post(
    "/zlmediakit/on_flow_report",
    summary="ZLMediaKit on_flow_report: bytes and duration",
    openapi_extra=body_schema(ZlmFlowReport),
)
async def zlmediakit_on_flow_report(
    request: Request, gate: Gate, gateway: Gateway, server: ServerName = None
) -> Response:
    body = await parse_body(request, ZlmFlowReport)
    if body.player:
        await gate.ended(
            _zlm_attempt(body, gateway, None, server),
            bytes_sent=body.totalBytes,
            duration_seconds=body.duration,
        )
    return Response(ZLM_ALLOW, media_type=JSON)


# ------------------------------------------------------------------------------ nginx-rtmp


NGINX_FORM_FIELDS = ("call", "addr", "clientid", "app", "name", "tcurl", "token")
NGINX_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {name: {"type": "string"} for name in NGINX_FORM_FIELDS},
                }
            }
        },
    }
}


async def _nginx_attempt(request: Request, gateway: Principal, server: str | None) -> Attempt:
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    token = form.get("token") or _token_in_query(
        urlsplit(form.get("tcurl", form.get("tcUrl", ""))).query
    )
    app = form.get("app", "")
    name = form.get("name", "")
    session = f"{form.get('addr', '')}:{form.get('clientid', '')}"
    return Attempt(
        server="nginx-rtmp",
        token=token,
        action="live",
        path=f"{app}/{name}",
        protocol="rtmp",
        client_ip=form.get("addr") or None,
        session_id=session,
        media_server=gateway.subject,
        server_name=server,
    )


@router.post(
    "/nginx-rtmp/on_play",
    summary="nginx-rtmp on_play (form-encoded): 2xx allows",
    response_class=Response,
    openapi_extra=NGINX_FORM,
)
async def nginx_rtmp_on_play(
    request: Request, gate: Gate, gateway: Gateway, server: ServerName = None
) -> Response:
    verdict = await gate.check(await _nginx_attempt(request, gateway, server))
    return Response(status_code=200) if verdict.allowed else _refusal(verdict)


@router.post(
    "/nginx-rtmp/on_play_done",
    summary="nginx-rtmp on_play_done: the session ended",
    response_class=Response,
    openapi_extra=NGINX_FORM,
)
async def nginx_rtmp_on_play_done(
    request: Request, gate: Gate, gateway: Gateway, server: ServerName = None
) -> Response:
    await gate.ended(await _nginx_attempt(request, gateway, server))
    return Response(status_code=200)
