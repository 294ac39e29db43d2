"""The demo's clients run in a process of their own, which ends with FeedGrid."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from deploy.demo import DemoClients, _markers
from schemas.settings import Settings


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))


async def test_the_demo_clients_process_reports_loaded_and_ends_when_stopped(
    settings: Settings, tmp_path: Path
) -> None:
    """A city already loaded and replayed: the process says so at once (start returns) and
    keeps running its gateways (here they find no server) until FeedGrid stops it."""
    settings = settings.model_copy(update={"var_dir": tmp_path})
    directory, *markers = _markers(settings)
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_bytes(b"{}")
    for marker in markers:
        marker.write_bytes(orjson.dumps({"state": "done"}))
    clients = DemoClients(settings, "http://127.0.0.1:9", "no-token")
    began = time.monotonic()
    await clients.start()
    process = clients._process  # noqa: SLF001 (the process under test)
    assert process is not None and process.pid is not None
    assert time.monotonic() - began < 60
    assert process.is_alive()  # the gateways' side goes on until FeedGrid stops it
    pid = process.pid
    clients.stop()
    assert not _alive(pid)
    assert process.exitcode is not None
    clients.stop()  # a second stop changes nothing
