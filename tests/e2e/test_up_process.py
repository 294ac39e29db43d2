"""`feedgrid up` as a user runs it: one real process with the API, relay and Faust agents."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

pytestmark = pytest.mark.kafka


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_group_to_end(group: int, timeout: float) -> list[str]:
    """Waits until no process of the group is left; the command lines of those still there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return []
        time.sleep(0.1)
    left = subprocess.run(
        ["ps", "-o", "pid=,args=", "--sid", str(group)], capture_output=True, text=True, check=False
    )
    return left.stdout.splitlines()


def test_feedgrid_up_serves_ready_api_with_embedded_worker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = _free_port()
    env = os.environ | {
        "FEEDGRID_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/registry.db",
        "FEEDGRID_CLICKHOUSE_URL": f"chdb://{tmp_path}/analytics",
        "FEEDGRID_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FEEDGRID_TOPIC_PREFIX": f"up{uuid.uuid4().hex[:8]}.",
        "FEEDGRID_VAR_DIR": str(tmp_path / "var"),
        "FEEDGRID_LOG_FORMAT": "json",
    }
    env.pop("FEEDGRID_ADMIN_TOKEN", None)
    # Output to a file, not a pipe: a pipe held open by any leftover child would hang the test.
    log_path = tmp_path / "up.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "up", "--port", str(port), "--no-demo", "--no-kafka"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a group of its own, as a service manager runs it
    )
    try:
        ready = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, ready.text if ready else "no answer"
        token = (tmp_path / "var" / "admin-token").read_text().strip()
        listed = httpx.get(
            f"http://127.0.0.1:{port}/v1/departments", headers={"Authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "feedgrid_http_requests_total" in metrics
    finally:
        # To the whole group, as a service manager stops it (and Ctrl-C reaches a terminal's
        # foreground group): the bulk-validation helper gets it too.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # What the API started (the bulk-validation helper, multiprocessing's resource tracker)
        # ends soon after it; the tracker's last words, if any, come then.
        group_left = _wait_for_group_to_end(process.pid, timeout=15)
        log_file.close()
    output = log_path.read_text()
    assert group_left == [], f"still running after the API stopped: {group_left}"
    # uvicorn shuts down cleanly, then re-raises SIGTERM so the exit status says why it ended.
    assert process.returncode in (0, -signal.SIGTERM), output[-3000:]
    assert "Application shutdown complete" in output
    assert "admin token" in output
    # The worker ran beside the API (its own thread) with the batch path on both hot topics.
    assert "stream worker running" in output
    assert "access-events" in output and "heartbeats" in output
    # A clean start and stop says nothing alarming: no ERROR or WARNING line (topics and the
    # consumer groups' coordinators are waited for before any consumer starts).
    levels = [
        orjson.loads(line).get("level", "") for line in output.splitlines() if line[:1] == "{"
    ]
    assert levels and "info" in {level.lower() for level in levels}
    alarming = [
        line
        for line in output.splitlines()
        if line[:1] == "{"
        and orjson.loads(line).get("level", "").upper() in {"ERROR", "WARNING", "CRITICAL"}
    ]
    assert alarming == [], alarming[:10]
    assert "Traceback" not in output
    # The helper left the stop to the API, which shut its pool down in order before uvicorn
    # re-raised SIGTERM (no exit handler runs then): the tracker found nothing left behind.
    assert "leaked semaphore" not in output, output[-2000:]
