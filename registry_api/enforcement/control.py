"""The media servers' own control APIs, one client each: how a session is cut.

Every client answers the same question for one recorded session: cut now, already gone, or a
failure (``ControlFailure``), which says whether waiting could cure it. What a server answers
for a session it no longer has counts as gone: the player left before we came.

- nginx-rtmp (``rtmp_control all;``): ``GET <control>/drop/subscriber?app=&name=&clientid=``
  answers 200 with the number of sessions dropped. The control module sees the sessions of the
  worker process that serves the request: run the RTMP server with one worker.
- ZLMediaKit: ``GET <api>/index/api/kick_session?secret=&id=`` answers ``{"code": 0}``; a
  session it cannot find is ``{"code": -1, "msg": "can not find the target"}``, a wrong secret
  ``{"code": -100}``.
- MediaMTX: ``POST <api>/v3/<kind>/kick/{id}`` with kind rtspsessions, rtspssessions,
  rtmpconns, rtmpsconns, webrtcsessions or srtconns after the reader's protocol; 404 when the
  session is gone, 401 when the API refuses our credentials.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import quote

import httpx

from schemas.settings import MediaServerControl

CutOutcome = Literal["cut", "gone"]

MEDIAMTX_KINDS = {
    "rtsp": "rtspsessions",
    "rtsps": "rtspssessions",
    "rtmp": "rtmpconns",
    "rtmps": "rtmpsconns",
    "webrtc": "webrtcsessions",
    "srt": "srtconns",
}
ZLM_SUCCESS = 0
ZLM_NOT_FOUND = -1


class ControlFailure(Exception):
    """A cut that did not happen. ``lasting``: retrying cannot cure it (no control API for
    the server, credentials refused, a session the server cannot name)."""

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True)
class SessionToCut:
    kind: str
    server: str
    session_id: str
    app: str | None
    stream: str | None
    protocol: str | None


class ControlClient(Protocol):
    async def cut(self, session: SessionToCut) -> CutOutcome: ...


def _basic_auth(server: MediaServerControl) -> dict[str, str]:
    if server.secret is None:
        return {}
    secret = server.secret.get_secret_value()
    if ":" not in secret:
        return {"Authorization": f"Bearer {secret}"}
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


def _failed_status(response: httpx.Response, what: str) -> ControlFailure:
    lasting = response.status_code in (401, 403)
    return ControlFailure(f"{what} answered HTTP {response.status_code}", lasting=lasting)


class NginxRtmpControl:
    def __init__(self, server: MediaServerControl, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http

    async def cut(self, session: SessionToCut) -> CutOutcome:
        if not (session.app and session.stream):
            raise ControlFailure("the session has no application and stream name", lasting=True)
        # nginx compares the arguments as they arrive, undecoded: a stream name's "/" must
        # stay a "/" (quote's default), or no session matches.
        query = "&".join(
            f"{key}={quote(value)}"
            for key, value in (
                ("app", session.app),
                ("name", session.stream),
                ("clientid", session.session_id),
            )
        )
        response = await self.http.get(
            f"{self.server.control_url.rstrip('/')}/drop/subscriber?{query}",
            headers=_basic_auth(self.server),
        )
        if response.status_code != 200:
            raise _failed_status(response, "nginx-rtmp control")
        dropped = response.text.strip()
        return "cut" if dropped.isdigit() and int(dropped) > 0 else "gone"


class ZlmControl:
    def __init__(self, server: MediaServerControl, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http

    async def cut(self, session: SessionToCut) -> CutOutcome:
        params = {"id": session.session_id}
        if self.server.secret is not None:
            params["secret"] = self.server.secret.get_secret_value()
        response = await self.http.get(
            self.server.control_url.rstrip("/") + "/index/api/kick_session", params=params
        )
        if response.status_code != 200:
            raise _failed_status(response, "ZLMediaKit API")
        try:
            answer = response.json()
            code = int(answer.get("code"))
        except (ValueError, TypeError, AttributeError):
            raise ControlFailure("ZLMediaKit API answered something else than its JSON") from None
        if code == ZLM_SUCCESS:
            return "cut"
        if code == ZLM_NOT_FOUND:
            return "gone"
        message = str(answer.get("msg", ""))[:200]
        raise ControlFailure(f"ZLMediaKit API code {code}: {message}", lasting=code == -100)


class MediaMtxControl:
    def __init__(self, server: MediaServerControl, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http

    async def cut(self, session: SessionToCut) -> CutOutcome:
        kind = MEDIAMTX_KINDS.get(session.protocol or "")
        if kind is None:
            raise ControlFailure(
                f"MediaMTX cannot kick a {session.protocol or 'unknown'} reader", lasting=True
            )
        response = await self.http.post(
            f"{self.server.control_url.rstrip('/')}/v3/{kind}/kick/{session.session_id}",
            headers=_basic_auth(self.server),
        )
        if response.status_code == 200:
            return "cut"
        if response.status_code == 404:
            return "gone"
        raise _failed_status(response, "MediaMTX API")


def control_client(server: MediaServerControl, http: httpx.AsyncClient) -> ControlClient:
    if server.kind == "nginx-rtmp":
        return NginxRtmpControl(server, http)
    if server.kind == "zlmediakit":
        return ZlmControl(server, http)
    return MediaMtxControl(server, http)


class MediaServers:
    """The configured media servers by name, each with its control client."""

    def __init__(self, servers: list[MediaServerControl], http: httpx.AsyncClient) -> None:
        self._by_name: dict[str, ControlClient] = {}
        self._only_of_kind: dict[str, ControlClient] = {}
        of_kind: dict[str, list[ControlClient]] = {}
        for server in servers:
            client = control_client(server, http)
            self._by_name[server.name] = client
            of_kind.setdefault(server.kind, []).append(client)
        self._only_of_kind = {kind: found[0] for kind, found in of_kind.items() if len(found) == 1}

    def knows(self, kind: str, name: str) -> bool:
        return name in self._by_name or kind in self._only_of_kind

    def client_for(self, kind: str, name: str) -> ControlClient:
        """The server the session lives on: by its name, or the only one of its kind."""
        client = self._by_name.get(name) or self._only_of_kind.get(kind)
        if client is None:
            raise ControlFailure(
                f"no control API configured for {kind} server {name!r} (FEEDGRID_MEDIA_SERVERS)",
                lasting=True,
            )
        return client
