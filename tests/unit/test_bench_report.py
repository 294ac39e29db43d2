"""The benchmark report (``./deploy/bench --keep-others``) keeps what was not measured again."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bench.run_all import kept_figures, run_command


def test_figures_not_measured_again_are_kept_and_marked_with_their_run(tmp_path: Path) -> None:
    previous = tmp_path / "latest.json"
    previous.write_text(
        json.dumps(
            {
                "generated_at": "2026-12-05T10:00:00+00:00",
                "figures": [
                    {"benchmark": "bench_pipeline", "name": "throughput", "value": 1, "ratio": 2},
                    {"benchmark": "bench_pipeline", "name": "analytics", "value": 180},
                    {"benchmark": "bench_load", "name": "near", "value": 3,
                     "from_run": "2026-12-01T00:00:00+00:00"},
                ],
            }
        )
    )  # fmt: skip
    # Only the pipeline's analytics part ran now.
    measured = [{"benchmark": "bench_pipeline", "name": "analytics", "value": 90}]
    assert kept_figures(previous, measured) == [
        {"benchmark": "bench_pipeline", "name": "throughput", "value": 1,
         "from_run": "2026-12-05T10:00:00+00:00"},
        {"benchmark": "bench_load", "name": "near", "value": 3,
         "from_run": "2026-12-01T00:00:00+00:00"},
    ]  # fmt: skip
    assert kept_figures(tmp_path / "missing.json", measured) == []


# A benchmark as far as stopping goes: it starts a server in a session of its own, prints a
# figure, runs on, and stops its server in a ``finally`` block.
_RUNS_ON = """
import subprocess, sys, time
from bench.common import stop_cleanly_on_sigterm
stop_cleanly_on_sigterm()
server = subprocess.Popen(["sleep", "300"], start_new_session=True)
print('{"name": "before", "value": 1}', flush=True)
print(server.pid, file=sys.stderr, flush=True)
try:
    time.sleep(300)
finally:
    server.terminate()
    server.wait()
    print('{"name": "stopped", "value": %d}' % server.pid, flush=True)
"""


def test_a_benchmark_past_its_time_stops_its_servers_and_keeps_its_figures() -> None:
    """run_all's timeout ends a benchmark with SIGTERM, not SIGKILL: the benchmark stops the
    servers it started (which a SIGKILL, or the default SIGTERM, left running) and the
    figures it printed are in the report."""
    figures, problem = run_command(
        [sys.executable, "-c", _RUNS_ON], "bench_x", timeout=3.0, grace=10.0
    )
    assert [figure["name"] for figure in figures] == ["before", "stopped"]
    assert all(figure["benchmark"] == "bench_x" for figure in figures)
    assert problem.startswith("bench_x: timed out after 3s")
    with pytest.raises(ProcessLookupError):  # the server is gone, not left running
        os.kill(figures[1]["value"], 0)
