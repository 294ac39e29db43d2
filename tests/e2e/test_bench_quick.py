"""`./deploy/bench --quick` as a smoke run: the report's shape, never its timings.

The benchmark runner starts its own processes (here the mixed-load benchmark: a real
`feedgrid up` and a load generator beside it) and writes bench/results/latest.{json,md};
the test points it at a temporary directory and reads what it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kafka

REPOSITORY = Path(__file__).resolve().parents[2]
LOAD_KINDS = (
    "search_near",
    "search_sees",
    "access_request",
    "hook_check",
    "heartbeat",
    "analytics",
)


def run_quick_report(benchmarks: list[str], out: Path, kafka_bootstrap: str) -> dict[str, Any]:
    environment = os.environ | {"FEEDGRID_TEST_KAFKA": kafka_bootstrap}
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run_all",
            "--quick",
            "--out",
            str(out),
            "--only",
            *benchmarks,
        ],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    return json.loads((out / "latest.json").read_text())  # type: ignore[no-any-return]


BACKGROUND = {
    "status_transitions",
    "last_seen_updates",
    "outbox_events_relayed",
    "sink_rows_written",
    "loop_beats_over_20ms_late",
    "loop_stalls_reported",
    "server_cpu_s",
}


def test_quick_load_report_has_every_kind_beside_healthz_and_no_failed_request(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    report = run_quick_report(["bench_load"], tmp_path, kafka_bootstrap)

    assert report["quick"] is True
    assert report["problems"] == []
    figures = {figure["name"]: figure for figure in report["figures"]}
    expected = {
        f"load_{kind}_{figure}" for kind in LOAD_KINDS for figure in ("throughput", "p99", "errors")
    } | {"load_hook_check_p99_at_2000_per_second", "load_api_process_rss"}
    assert expected <= set(figures), expected - set(figures)
    for figure in report["figures"]:
        assert figure["benchmark"] == "bench_load"
        assert {"name", "value", "unit", "ratio"} <= set(figure), figure
        assert isinstance(figure["value"], int | float), figure
    for kind in LOAD_KINDS:
        throughput = figures[f"load_{kind}_throughput"]
        # each kind was loaded to its limit beside /healthz of the same server, same run
        assert throughput["closed_loop"]["count"] > 0, throughput
        assert throughput["baseline_value"] > 0 and throughput["baseline"].startswith("/healthz")
        assert {"target", "met", "p99_ms", "probes"} <= set(throughput), throughput
        # Not a timing: under load no request may fail (a 5xx, a refused check, a timeout)
        errors = figures[f"load_{kind}_errors"]
        assert errors["value"] == 0 and errors["rate_limited_429"] == 0, errors
        # each step says what the server did beside the load (the demo's own traffic)
        for step in [throughput["closed_loop"], throughput["healthz"], *throughput["probes"]]:
            assert set(step["background"]) == BACKGROUND, step
            assert min(step["background"].values()) >= 0, step
        # each probe started once the pipeline settled (seconds, or None past the deadline)
        assert all("settled_s" in probe for probe in throughput["probes"]), throughput
    # an access request's events are relayed while the requests run: the counters are read
    relayed = figures["load_access_request_throughput"]["closed_loop"]["background"]
    assert relayed["outbox_events_relayed"] > 0, relayed
    assert relayed["server_cpu_s"] > 0, relayed  # the server's CPU during the step is read
    memory = figures["load_api_process_rss"]
    assert memory["value"] > 0 and memory["baseline_value"] > 0
    table = (tmp_path / "latest.md").read_text()
    assert "| load_search_near_throughput |" in table


def test_quick_stream_targets_report_every_figure_and_lose_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    report = run_quick_report(["bench_stream_targets"], tmp_path, kafka_bootstrap)

    assert report["problems"] == []
    figures = {figure["name"]: figure for figure in report["figures"]}
    assert set(figures) == {
        "heartbeats_reports_per_second",
        "heartbeats_registry_writes_for_unchanged_reports",
        "heartbeats_silent_feed_offline_after_silence",
        "burst_allowed_checks_visible_in_analytics",
    }
    for figure in report["figures"]:
        assert {"name", "value", "unit", "target", "met"} <= set(figure), figure
        assert isinstance(figure["value"], int | float), figure
    # Not timings: what the stream core must never do, whatever the machine's speed.
    rate = figures["heartbeats_reports_per_second"]
    assert rate["baseline_value"] > 0 and rate["errors_in_window"] == 0, rate
    assert rate["consumed_total"] == rate["accepted_total"] > 0, rate  # every report consumed
    writes = figures["heartbeats_registry_writes_for_unchanged_reports"]
    assert writes["value"] == 0 and writes["reports_in_span"] > 0, writes
    silence = figures["heartbeats_silent_feed_offline_after_silence"]
    assert silence["never_offline"] == 0 and silence["other_feeds_listed_offline"] == 0, silence
    burst = figures["burst_allowed_checks_visible_in_analytics"]
    assert burst["allowed_checks"] > 0 and burst["missing_at_end"] == 0, burst
    assert burst["hook_events_dropped"] == 0, burst
