"""The workers' Prometheus figures that both paths (batch and Faust agents) report."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

EVENTS_HANDLED = Counter(
    "feedgrid_stream_events_total", "Events consumed and committed by the agents", ["agent"]
)
BATCH_SECONDS = Histogram(
    "feedgrid_stream_batch_seconds",
    "Time to store one batch (ClickHouse and outgoing messages)",
    ["agent"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HANDLER_FAILURES = Counter(
    "feedgrid_stream_handler_failures_total", "Batches whose handler raised (retried)", ["agent"]
)
LAG = Gauge("feedgrid_stream_lag", "Records behind the end of the topic", ["agent"])
STALLED = Gauge(
    "feedgrid_stream_stalled_seconds",
    "Seconds since the agent last committed while it has records to read (0: keeping up)",
    ["agent"],
)

# Faust agents: when the batch now being handled began (absent while idle).
_busy_since: dict[str, float] = {}


def batch_started(agent: str) -> None:
    _busy_since[agent] = time.monotonic()


def batch_finished(agent: str) -> None:
    _busy_since.pop(agent, None)
    STALLED.labels(agent).set(0)


def faust_agents_stalled(agents: list[str]) -> dict[str, float]:
    """Seconds each Faust agent has spent on its current batch (a batch in hand is lag)."""
    now = time.monotonic()
    figures = {}
    for agent in agents:
        since = _busy_since.get(agent)
        stalled = round(now - since, 1) if since is not None else 0.0
        STALLED.labels(agent).set(stalled)
        figures[agent] = stalled
    return figures
