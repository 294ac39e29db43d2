"""A benchmark refuses to start without the broker its servers relay to."""

from __future__ import annotations

import socket

import pytest

from bench import common


def test_a_benchmark_without_kafka_says_how_to_start_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        monkeypatch.setattr(common, "KAFKA", f"127.0.0.1:{port}")
        with pytest.raises(SystemExit) as stopped:
            common.require_kafka(timeout=1.0)
    assert f"Kafka does not answer at 127.0.0.1:{port}" in str(stopped.value)
    assert "feedgrid kafka start" in str(stopped.value)


def test_a_broker_that_takes_connections_lets_it_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(common, "KAFKA", f"127.0.0.1:{listening.getsockname()[1]}")
        common.require_kafka(timeout=1.0)
