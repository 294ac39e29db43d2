"""Small real HTTP servers that speak the control APIs of ZLMediaKit and MediaMTX, for the
session-cut tests (neither server is installable here). Each runs on a loopback port in a
thread of the test process, holds a set of live session ids, and answers as the real server
documents: ZLMediaKit ``GET /index/api/kick_session?secret=&id=`` with ``{"code": 0}``,
``{"code": -1, "msg": "can not find the target"}`` or ``{"code": -100}`` for a wrong secret;
MediaMTX ``POST /v3/<kind>/kick/{id}`` with 200, 404 (no such session) or 401 (credentials)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MEDIAMTX_KINDS = {
    "rtspsessions",
    "rtspssessions",
    "rtmpconns",
    "rtmpsconns",
    "webrtcsessions",
    "srtconns",
}


@dataclass
class ControlServer:
    kind: str  # zlmediakit | mediamtx
    secret: str
    sessions: set[str] = field(default_factory=set)
    kicked: dict[str, float] = field(default_factory=dict)  # session id -> when (monotonic)
    calls: list[str] = field(default_factory=list)
    failures_left: int = 0  # answer 503 this many times first
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, object]:
        with self.lock:
            self.calls.append(f"{method} {target}")
            if self.failures_left > 0:
                self.failures_left -= 1
                return 503, {"error": "busy"}
            if self.kind == "zlmediakit":
                return self._zlmediakit(method, target)
            return self._mediamtx(method, target, headers)

    def _kick(self, session_id: str) -> bool:
        if session_id not in self.sessions:
            return False
        self.sessions.discard(session_id)
        self.kicked[session_id] = time.monotonic()
        return True

    def _zlmediakit(self, method: str, target: str) -> tuple[int, object]:
        url = urlsplit(target)
        if method != "GET" or url.path != "/index/api/kick_session":
            return 404, {"code": -1, "msg": "no such api"}
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if query.get("secret") != self.secret:
            return 200, {"code": -100, "msg": "Incorrect secret"}
        if "id" not in query:
            return 200, {"code": -300, "msg": "required argument: id"}
        if not self._kick(query["id"]):
            return 200, {"code": -1, "msg": "can not find the target"}
        return 200, {"code": 0, "msg": "success"}

    def _mediamtx(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, object]:
        expected = "Basic " + base64.b64encode(self.secret.encode()).decode()
        if headers.get("authorization") != expected:
            return 401, {"error": "authentication error"}
        parts = urlsplit(target).path.strip("/").split("/")
        if method != "POST" or len(parts) != 4 or parts[0] != "v3" or parts[2] != "kick":
            return 404, {"error": "not found"}
        if parts[1] not in MEDIAMTX_KINDS:
            return 404, {"error": "not found"}
        if not self._kick(parts[3]):
            return 404, {"error": "session not found"}
        return 200, None


def _handler(server: ControlServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, body = server.answer(self.command, self.path, headers)
            payload = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve  # noqa: N815 - http.server's names
        do_POST = _serve  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    return Handler


@contextmanager
def control_server(kind: str, secret: str, port: int = 0) -> Iterator[ControlServer]:
    state = ControlServer(kind, secret)
    http = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
    state.url = f"http://127.0.0.1:{http.server_address[1]}"
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)
