"""The load benchmark's generator against a server that closes idle keep-alive connections
(uvicorn does after ``timeout_keep_alive`` seconds): slow open-loop probes leave a connection
idle for longer than that, and the generator must open a new one, not count the server's
close as a failed request (the 8 "connection closed by the server" errors of a bench_load run).
"""

from __future__ import annotations

from fastapi import FastAPI

from bench.bench_load import raw_request, run_step
from tests.integration.server_support import serving


def app_answering_200() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo() -> dict[str, bool]:
        return {"ok": True}

    return app


async def test_idle_connections_the_server_closed_are_reopened_not_failed() -> None:
    with serving(app_answering_200(), http="httptools", timeout_keep_alive=1) as url:
        host, port = url.removeprefix("http://").split(":")
        request = raw_request(f"{host}:{port}", "POST", "/echo", None, b"{}")
        # One connection, a request every 2 s: each one after the server closed it (1 s idle).
        step = {"requests": [request], "connections": 1, "duration": 4.5, "expected": 200}
        result = await run_step(host, int(port), step | {"rate": 0.5})
    assert result["count"] == 3
    assert result["errors"] == 0, result["error_samples"]
    assert result["statuses"] == {"200": 3}
