"""`feedgrid up --mqtt` beside a broker that is not its own: a clear refusal, not a crash."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from deploy.local_mosquitto import MosquittoLauncherError, start_mosquitto


def test_a_listener_that_is_not_this_var_dirs_broker_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        with pytest.raises(MosquittoLauncherError, match="something else listens"):
            start_mosquitto(port=port, base=tmp_path)
    assert not (tmp_path / "mqtt" / "admin-password").exists()  # nothing set up for it
