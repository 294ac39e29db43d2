"""`feedgrid up --mqtt` beside a broker that is not its own: a clear refusal, not a crash."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from deploy.local_mosquitto import MosquittoLauncherError, start_mosquitto


@pytest.mark.parametrize("left_behind", [False, True], ids=["fresh var", "stale broker files"])
def test_a_listener_that_is_not_this_var_dirs_broker_is_refused_with_the_reason(
    tmp_path: Path, left_behind: bool
) -> None:
    """Also when this var dir once ran a broker (its administrator's password and a pid file
    left behind) but another process holds the port now."""
    root = tmp_path / "mqtt"
    if left_behind:
        root.mkdir()
        (root / "admin-password").write_text("secret\n")
        gone = subprocess.Popen(["true"])
        gone.wait()
        (root / "mosquitto.pid").write_text(f"{gone.pid}\n")
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        with pytest.raises(MosquittoLauncherError, match="something else listens"):
            start_mosquitto(port=port, base=tmp_path)
    assert (root / "admin-password").exists() == left_behind  # nothing set up for the other
