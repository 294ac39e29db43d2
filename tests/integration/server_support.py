"""The app under a real uvicorn (FeedGrid's own server configuration) on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from deploy.http_server import server_config


@contextlib.contextmanager
def serving(app: FastAPI, http: str = "h11", **options: Any) -> Iterator[str]:
    """The app under uvicorn in a thread, on a loopback port the OS picked; its base URL.
    ``options``: more of uvicorn's settings (``timeout_keep_alive`` ...)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # loop="asyncio": uvloop would be installed as the process's event-loop policy, under
    # every test that runs after this one.
    config = server_config(
        app, loop="asyncio", http_implementation=http, ws="none", log_level="warning", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:
        assert thread.is_alive(), "the API stopped during start-up"
        assert time.monotonic() < deadline, "the API did not start in time"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(120)
        listener.close()
