"""Errors as clients see them: ``{"code", "message", "details"}`` with a 4xx status.

A 5xx means we have a bug; it is logged with its traceback and answered without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("feedgrid.errors")

MALFORMED_BODY = (
    "the body could not be parsed: it must be JSON in UTF-8, nested at most a few hundred "
    "levels, with numbers of sane size"
)


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code
        self.details = details
        self.headers = headers


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class PreconditionFailed(ApiError):
    status_code = 412
    code = "version_mismatch"


class Unprocessable(ApiError):
    status_code = 422
    code = "invalid"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details}


class ErrorBody(BaseModel):
    """The body of every refusal, documented so clients (and schema checks) can rely on it."""

    code: str
    message: str
    details: Any = None


ERROR_DESCRIPTIONS = {
    400: "Malformed body (not JSON in UTF-8, too deep, absurd numbers) or a NUL character",
    401: "No bearer token, or one that is not valid",
    403: "The caller's roles or department do not allow this",
    404: "Nothing with this id is visible to the caller",
    408: "The request body did not arrive in time",
    409: "The request conflicts with the current state",
    410: "The grant has ended or was revoked",
    412: "If-Match names an old version",
    413: "The body is larger than the configured limit",
    415: "The body's Content-Type is not one this endpoint takes",
    422: "A parameter or the body is invalid; `details` lists where",
    428: "If-Match is required",
    429: "Too many requests from this identity; retry after `Retry-After` seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the refusals a route can answer, each with ``ErrorBody``."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        documented[status] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
        if status == 429:
            documented[status]["headers"] = RETRY_AFTER
    return documented


def _clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    cleaned = []
    for item in errors:
        entry = {"loc": list(item.get("loc", ())), "msg": item.get("msg"), "type": item.get("type")}
        cleaned.append(entry)
    return cleaned


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(error.code, error.message, error.details),
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        details = _clean_validation_errors(error.errors())
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        return JSONResponse(
            error_body("invalid_request", f"{where}: {first['msg']}", details), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "malformed_body",
            404: "not_found",
            405: "method_not_allowed",
            408: "body_timeout",
            413: "payload_too_large",
        }.get(error.status_code, "http_error")
        message = str(error.detail)
        if error.status_code == 400:
            refusal = getattr(request.state, "body_refusal", None)
            code, message = ("nul_character", refusal) if refusal else (code, MALFORMED_BODY)
        return JSONResponse(
            error_body(code, message), status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", "an internal error occurred; it has been logged"),
            status_code=500,
        )
