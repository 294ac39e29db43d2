"""A headless Chromium driven through its DevTools protocol (CDP) over a websocket.

Just what the dashboard tests need: open a page, evaluate script in it and wait for a
condition, click and drag with real input events, take screenshots, and collect every console
error, uncaught exception and browser log error (a blocked resource, a CSP violation) the page
causes. Chromium is Debian's ``chromium`` package (``./deploy/test`` installs it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets

CHROMIUM_NAMES = ("chromium", "chromium-browser")
START_TIMEOUT_SECONDS = 30.0


class BrowserError(AssertionError):
    """The page did not do what the test waited for, or CDP refused a command."""


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One page target, through a CDP websocket of its own."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.connection:
            message = json.loads(raw)
            if "id" in message:
                future = self.waiting.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            self.events.append(message)
            self._note_error(message)

    def _note_error(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
            self.errors.append("console: " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        number = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[number] = future
        await self.connection.send(
            json.dumps({"id": number, "method": method, "params": params or {}})
        )
        answer = await asyncio.wait_for(future, 60)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})  # type: ignore[no-any-return]

    async def start(self) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.send(f"{domain}.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
        )

    async def goto(self, url: str) -> None:
        loaded = len(self.events)
        await self.send("Page.navigate", {"url": url})
        await self.wait_for_event("Page.loadEventFired", after=loaded)

    async def wait_for_event(self, method: str, *, after: int = 0, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(event.get("method") == method for event in self.events[after:]):
                return
            await asyncio.sleep(0.05)
        raise BrowserError(f"no {method} within {timeout} s")

    async def evaluate(self, expression: str) -> Any:
        """The value of a script expression (awaited when it is a promise)."""
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 30, what: str = "") -> Any:
        """Polls ``expression`` until it is truthy; its last value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise BrowserError(f"waited {timeout} s for {what or expression} (last value {value!r})")

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        x, y = await self.centre_of(selector)
        await self.mouse("mousePressed", x, y)
        await self.mouse("mouseReleased", x, y)

    async def centre_of(self, selector: str) -> tuple[float, float]:
        box = await self.evaluate(
            f"(() => {{ const node = document.querySelector({json.dumps(selector)});"
            " if (!node) return null; node.scrollIntoView({block: 'center'});"
            " const r = node.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if not box:
            raise BrowserError(f"no element {selector}")
        return float(box[0]), float(box[1])

    async def mouse(self, kind: str, x: float, y: float, buttons: int = 1) -> None:
        await self.send(
            "Input.dispatchMouseEvent",
            {
                "type": kind,
                "x": x,
                "y": y,
                "button": "left" if kind != "mouseMoved" or buttons else "none",
                "buttons": buttons if kind != "mouseReleased" else 0,
                "clickCount": 1,
            },
        )

    async def drag(
        self, start: tuple[float, float], end: tuple[float, float], steps: int = 8
    ) -> None:
        await self.mouse("mousePressed", *start)
        for step in range(1, steps + 1):
            x = start[0] + (end[0] - start[0]) * step / steps
            y = start[1] + (end[1] - start[1]) * step / steps
            await self.mouse("mouseMoved", x, y)
        await self.mouse("mouseReleased", *end)

    async def type_into(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).value = ''")
        await self.click(selector)
        await self.send("Input.insertText", {"text": text})

    async def screenshot(self, path: Path) -> None:
        shot = await self.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader
        await self.connection.close()


@contextlib.asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own profile) and its first page."""
    executable = chromium_path()
    if executable is None:
        raise BrowserError("Chromium is not installed: ./deploy/test installs Debian's chromium")
    profile = tempfile.mkdtemp(prefix="feedgrid-chromium-")
    process = subprocess.Popen(
        [
            executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ | {"HOME": profile},
    )
    try:
        port = await asyncio.to_thread(_devtools_port, process)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as devtools:
            targets = (await devtools.get("/json/list")).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        connection = await websockets.connect(url, max_size=64 * 1024 * 1024)
        page = Page(connection)
        try:
            await page.start()
            yield page
        finally:
            await page.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(process: subprocess.Popen[bytes]) -> int:
    """Reads ``DevTools listening on ws://127.0.0.1:PORT/...`` from Chromium's stderr."""
    assert process.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline().decode(errors="replace")
        if not line and process.poll() is not None:
            break
        seen.append(line)
        found = re.search(r"DevTools listening on ws://[\d.]+:(\d+)/", line)
        if found:
            # Nothing else reads stderr from now on: drain it so Chromium never blocks on it.
            threading_drain(process)
            return int(found.group(1))
    raise BrowserError("Chromium did not start: " + "".join(seen)[-2000:])


def threading_drain(process: subprocess.Popen[bytes]) -> None:
    import threading

    def drain() -> None:
        assert process.stderr is not None
        for _ in process.stderr:
            pass

    threading.Thread(target=drain, daemon=True).start()
