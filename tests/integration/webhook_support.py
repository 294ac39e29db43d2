"""A real webhook receiver in a process of its own (tests/webhook_receiver.py), and what a
test needs around it: start, kill, restart on the same port, read what it received."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from registry_api.subscriptions.signing import new_secret
from schemas.settings import NotificationTuning, Settings

RECEIVER = Path(__file__).resolve().parents[1] / "webhook_receiver.py"


def quick_notify(**overrides: Any) -> NotificationTuning:
    """Delivery tuned for tests: retries within a second, polled often."""
    values: dict[str, Any] = {
        "poll_seconds": 0.05,
        "retry_base_seconds": 0.1,
        "retry_max_seconds": 0.8,
        "attempt_timeout_seconds": 3.0,
        "max_attempts": 30,
    }
    values.update(overrides)
    return NotificationTuning(**values)


def with_quick_notify(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(update={"notify": quick_notify(**overrides)})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    """``python tests/webhook_receiver.py`` on a fixed loopback port."""

    def __init__(self, log: Path, secret: str | None = None, port: int | None = None) -> None:
        self.log = log
        self.secret = secret or new_secret()
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/feedgrid"

    def start(self) -> Receiver:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(RECEIVER),
                "--port",
                str(self.port),
                "--secret",
                self.secret,
                "--log",
                str(self.log),
            ],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == b"listening", line
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye, whatever it was doing."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def received(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout} s")


async def subscribe(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    receiver: Receiver,
    kinds: list[str],
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/v1/subscriptions",
        json={"url": receiver.url, "kinds": kinds, "secret": receiver.secret, **extra},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def deliveries(
    client: httpx.AsyncClient, subscription_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = await client.get(
        f"/v1/subscriptions/{subscription_id}/deliveries",
        params={"limit": 1000},
        headers=headers or {},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]
