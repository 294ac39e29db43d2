"""Background loops give way to requests in flight, and only to them (infra/foreground)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.types import Receive, Scope, Send

from infra import foreground
from infra.foreground import MAX_PAUSE_SECONDS, background_share, busy, give_way, pause_for, serving
from registry_api.observability import RequestMetricsMiddleware


def paused_total(loop: str) -> float:
    return (
        REGISTRY.get_sample_value("feedgrid_background_paused_seconds_total", {"loop": loop}) or 0.0
    )


def test_no_pause_without_requests_in_flight() -> None:
    with background_share(0.5):
        assert not busy()
        assert pause_for(0.1) == 0.0


def test_a_request_in_flight_makes_background_pause_in_proportion_to_its_work() -> None:
    with background_share(0.5), serving():
        assert busy()
        assert pause_for(0.04) == pytest.approx(0.04)  # half its pace: as long as it worked
        assert pause_for(10.0) == MAX_PAUSE_SECONDS  # however long the piece was
    with background_share(0.25), serving():
        assert pause_for(0.02) == pytest.approx(0.06)  # a quarter: three times as long
    assert not busy()
    with background_share(0.5):
        assert pause_for(0.04) == 0.0  # the request ended


def test_a_share_of_one_never_pauses_and_the_last_app_started_sets_it() -> None:
    with serving():
        assert pause_for(0.1) == 0.0  # no app asked: background keeps its pace
        with background_share(0.5):
            with background_share(1.0):
                assert pause_for(0.1) == 0.0
            assert pause_for(0.1) == pytest.approx(0.1)  # back to the first app's share


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="background share"), background_share(share):
        pass


async def test_give_way_sleeps_and_counts_the_pause() -> None:
    before = paused_total("test-loop")
    with background_share(0.5):
        began = time.perf_counter()
        assert await give_way("test-loop", 0.05) == 0.0
        assert time.perf_counter() - began < 0.04
        with serving():
            began = time.perf_counter()
            assert await give_way("test-loop", 0.05) == pytest.approx(0.05)
            assert time.perf_counter() - began >= 0.045
    assert paused_total("test-loop") == pytest.approx(before + 0.05)


async def test_the_request_middleware_counts_requests_but_not_probes_or_device_reports() -> None:
    seen: dict[str, int] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen[scope["path"]] = foreground._state.in_flight  # noqa: SLF001 (what it counted)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def failing(scope: Scope, receive: Receive, send: Send) -> Any:
        raise RuntimeError("the route broke")

    transport = httpx.ASGITransport(app=RequestMetricsMiddleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/v1/feeds", "/v1/hooks/mediamtx/auth", "/healthz", "/metrics"):
            assert (await client.get(path)).status_code == 200
        assert (await client.post("/v1/heartbeats", json={"items": []})).status_code == 200
    assert seen == {
        "/v1/feeds": 1,
        "/v1/hooks/mediamtx/auth": 1,
        "/healthz": 0,
        "/metrics": 0,
        "/v1/heartbeats": 0,
    }
    assert not busy()

    broken = httpx.ASGITransport(app=RequestMetricsMiddleware(failing))
    async with httpx.AsyncClient(transport=broken, base_url="http://test") as client:
        with pytest.raises(RuntimeError, match="the route broke"):
            await client.get("/v1/feeds")
    assert not busy()  # a request that failed is no longer in flight
