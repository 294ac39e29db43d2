"""Liveness, readiness and Prometheus metrics: open to anyone, no identity needed."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from infra.clickhouse import analytics_ready
from infra.health import run_checks
from infra.kafka_admin import broker_ready
from registry_api.dependencies import RuntimeDep

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
    ok = await broker_ready(runtime.settings.kafka_bootstrap, timeout=2.0)
    return ok, "reachable" if ok else f"no broker answers at {runtime.settings.kafka_bootstrap}"


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


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
