"""Liveness, readiness and Prometheus metrics: open to anyone, no identity needed, unless
``metrics_token`` is set (then /metrics needs it) or ``readyz_shows_addresses`` is off (then
/readyz says what is unreachable without saying where it was looked for)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from infra.clickhouse import analytics_ready
from infra.health import run_checks
from infra.kafka_admin import broker_ready
from registry_api.dependencies import RuntimeDep
from registry_api.errors import Unauthorized, error_responses
from registry_api.outbox.relay import BACKLOG

log = logging.getLogger("feedgrid.health")

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_database(runtime: RuntimeDep) -> tuple[bool, str]:
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True, "reachable"
    except Exception as error:
        return False, f"unreachable: {type(error).__name__}"


async def _check_kafka(runtime: RuntimeDep) -> tuple[bool, str]:
    settings = runtime.settings
    ok = await broker_ready(settings.kafka_bootstrap, timeout=2.0)
    if ok:
        return True, "reachable"
    where = f" at {settings.kafka_bootstrap}" if settings.readyz_shows_addresses else ""
    return False, f"no broker answers{where}"


async def _check_clickhouse(runtime: RuntimeDep) -> tuple[bool, str]:
    ok = await asyncio.to_thread(analytics_ready, runtime.settings.clickhouse_url)
    return ok, "reachable" if ok else "analytics store does not answer"


@router.get(
    "/readyz",
    summary="Every dependency answers (registry DB, Kafka, ClickHouse) and no worker stalls",
    responses={503: {"description": "A dependency does not answer: the same body, not ready"}},
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    started = time.perf_counter()
    names = ("database", "kafka", "clickhouse")
    results = await asyncio.gather(
        _check_database(runtime), _check_kafka(runtime), _check_clickhouse(runtime)
    )
    checks: dict[str, dict[str, object]] = {
        name: {"ok": ok, "detail": detail}
        for name, (ok, detail) in zip(names, results, strict=True)
    }
    # Parts of this process that registered a check (the embedded worker's stall watchdog).
    for name, (ok, detail) in run_checks().items():
        checks[name] = {"ok": ok, "detail": detail}
    ready = all(check["ok"] for check in checks.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _require_metrics_token(request: Request) -> None:
    expected = request.app.state.settings.metrics_token
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not presented:
        raise Unauthorized("/metrics needs its bearer token", code="missing_token")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("the metrics token is not valid", code="invalid_token")


@router.get(
    "/metrics",
    summary="Prometheus metrics (a bearer token when FEEDGRID_METRICS_TOKEN is set)",
    response_class=Response,
    responses=error_responses(401),
    dependencies=[Depends(_require_metrics_token)],
)
async def metrics(runtime: RuntimeDep) -> Response:
    # The relay's backlog is counted in the database (an indexed sum over the unsent rows),
    # so only when someone looks; unknown (NaN) while the database does not answer.
    try:
        BACKLOG.set(await runtime.relay.backlog())
    except Exception as error:
        log.warning("the outbox backlog cannot be counted: %s", error)
        BACKLOG.set(float("nan"))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
