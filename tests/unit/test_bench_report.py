"""The benchmark report (``./deploy/bench --keep-others``) keeps what was not measured again."""

from __future__ import annotations

import json
from pathlib import Path

from bench.run_all import kept_figures


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
