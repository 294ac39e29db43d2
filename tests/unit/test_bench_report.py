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


METRICS = """\
# HELP feedgrid_event_loop_lag_seconds How late the event loop's beat woke up
# TYPE feedgrid_event_loop_lag_seconds histogram
feedgrid_event_loop_lag_seconds_bucket{le="0.01"} 90.0
feedgrid_event_loop_lag_seconds_bucket{le="0.02"} 95.0
feedgrid_event_loop_lag_seconds_bucket{le="0.05"} 99.0
feedgrid_event_loop_lag_seconds_bucket{le="+Inf"} 100.0
feedgrid_event_loop_lag_seconds_count 100.0
feedgrid_event_loop_lag_seconds_sum 0.9
feedgrid_sink_rows_total{table="access_events"} 40.0
feedgrid_sink_rows_total{table="heartbeats"} 2.0
feedgrid_event_loop_blocked_total 3.0
"""


def test_the_load_benchmark_reads_the_servers_counters_and_its_loops_lateness() -> None:
    from bench.bench_load import BACKGROUND, read_counters, step_background
    from bench.common import read_exposition

    before = read_counters(read_exposition(METRICS), BACKGROUND)
    # a bucket is read alone, a bare name summed over its labels, a histogram's count kept apart
    assert before["loop_beats"] == 100 and before["loop_beats_within_20ms"] == 95
    assert before["sink_rows_written"] == 42 and before["loop_stalls_reported"] == 3
    assert before["status_transitions"] == 0  # not exposed: nothing
    after = {
        **before,
        "loop_beats": 150.0,
        "loop_beats_within_20ms": 138.0,
        "sink_rows_written": 50.0,
    }
    step = step_background(before, after, 1.234)
    assert step["loop_beats_over_20ms_late"] == 7  # 50 beats, 43 of them within 20 ms
    assert step["sink_rows_written"] == 8 and step["loop_stalls_reported"] == 0
    assert step["server_cpu_s"] == 1.23
    assert "loop_beats" not in step and "loop_beats_within_20ms" not in step
