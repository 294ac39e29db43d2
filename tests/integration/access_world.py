"""A small city for the access tests: departments, their keys, and feeds of every sharing class.

Built through the public API (departments, API keys, feeds), so the tests exercise what a
client would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from registry_api.runtime import Runtime

TRANSPORT = "lz-jtj"  # owns the feeds
POLICE = "lz-gaj"  # public security: may make emergency requests
URBAN = "lz-cgj"  # listed in the conditional feed's conditions
ENVIRONMENT = "lz-hbj"  # not listed anywhere

DEPARTMENTS = {
    TRANSPORT: ("Transport Bureau", "transport", 3),
    POLICE: ("Public Security Bureau", "public_security", 5),
    URBAN: ("Urban Management Bureau", "urban_management", 5),
    ENVIRONMENT: ("Ecology and Environment Bureau", "environment", 5),
}
ROLES = ("requester", "dept_admin", "auditor", "operator", "gateway")

CENTRE = (103.8343, 36.0611)  # Lanzhou, near the Zhongshan bridge
LEGAL_BASIS = "Regulations on the Security Protection of Critical Information Infrastructure (2021)"
CONDITIONS = {
    "departments": [URBAN, POLICE],
    "purposes": ["traffic management"],
    "actions": ["live", "snapshot"],
    "max_duration_minutes": 120,
}


def camera_body(
    owner: str, serial: int, sharing: dict[str, Any], offset_m: float = 0.0
) -> dict[str, Any]:
    code = f"62010000041322{serial:06d}"
    lon = CENTRE[0] + offset_m / 90_000.0
    return {
        "kind": "camera",
        "code": code,
        "owner": owner,
        "name": f"Test camera {serial}",
        "location": {"type": "Point", "coordinates": [lon, CENTRE[1]]},
        "fov": {"heading": 90.0, "angle": 60.0, "range_m": 80.0},
        "stream": {
            "protocol": "rtsp",
            "url": f"rtsp://10.14.0.{serial % 250 + 1}:554/Streaming/Channels/{serial}01",
            "media_path": f"{owner}/{code}",
        },
        "sharing": sharing,
    }


def sensor_body(owner: str, serial: int, sharing: dict[str, Any]) -> dict[str, Any]:
    code = f"{owner}-aq-{serial:06d}"
    return {
        "kind": "sensor",
        "code": code,
        "owner": owner,
        "name": f"Test air quality station {serial}",
        "location": {"type": "Point", "coordinates": [CENTRE[0] + 0.001, CENTRE[1] + 0.001]},
        "stream": {
            "protocol": "mqtt",
            "url": f"mqtt://10.20.0.5:1883/aq/{serial:06d}",
            "media_path": f"{owner}/{code}",
        },
        "datastreams": [{"name": "pm25", "observed_property": "PM2.5", "unit": "ug/m3"}],
        "sharing": sharing,
    }


@dataclass
class World:
    client: httpx.AsyncClient
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    feeds: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def runtime(self) -> Runtime:
        return self.client.app.state.runtime  # type: ignore[attr-defined,no-any-return]

    def auth(self, department: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[(department, role)]}"}

    def feed_id(self, name: str) -> str:
        return str(self.feeds[name]["id"])

    def internal_url(self, name: str) -> str:
        return str(self.feeds[name]["stream"]["url"])

    async def request(
        self, department: str, role: str = "requester", *, expect: int = 201, **body: Any
    ) -> dict[str, Any]:
        body.setdefault("purpose", "traffic management")
        body.setdefault("actions", ["live"])
        response = await self.client.post(
            "/v1/access-requests", json=body, headers=self.auth(department, role)
        )
        assert response.status_code == expect, response.text
        return response.json()  # type: ignore[no-any-return]

    async def retrieval(
        self, department: str, grant_id: str, role: str = "requester"
    ) -> httpx.Response:
        return await self.client.get(
            f"/v1/grants/{grant_id}/retrieval", headers=self.auth(department, role)
        )

    async def hook(
        self, path: str, token: str | None, action: str = "read", **extra: Any
    ) -> httpx.Response:
        body = {
            "user": "",
            "password": "",
            "token": token or "",
            "ip": "127.0.0.1",
            "action": action,
            "path": path,
            "protocol": "rtsp",
            "id": None,
            "query": "",
        }
        body.update(extra)
        return await self.client.post(
            "/v1/hooks/mediamtx/auth", json=body, headers=self.auth(TRANSPORT, "gateway")
        )

    def expired_token(
        self, grant_id: str, feed_id: str, path: str, department: str, *, compact: bool = False
    ) -> str:
        """A correctly signed token whose time is over (minted as if an hour ago)."""
        past = datetime.now(UTC) - timedelta(hours=1)
        minted = self.runtime.access.tokens.mint(
            subject="key:test:expired",
            department=department,
            grant_id=grant_id,
            feed_id=feed_id,
            actions=["live"],
            media_path=path,
            grant_valid_from=past,
            grant_valid_until=past + timedelta(days=1),
            now=past,
        )
        token = minted.compact if compact else minted.token
        assert token is not None
        return token


async def register_feed(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/feeds", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def build_world(client: httpx.AsyncClient) -> World:
    world = World(client)
    for code, (name, kind, deadline) in DEPARTMENTS.items():
        created = await client.post(
            "/v1/departments",
            json={"code": code, "name": name, "kind": kind, "answer_deadline_days": deadline},
        )
        assert created.status_code == 201, created.text
        for role in ROLES:
            issued = await client.post(
                f"/v1/departments/{code}/api-keys", json={"name": role, "roles": [role]}
            )
            assert issued.status_code == 201, issued.text
            world.keys[(code, role)] = issued.json()["key"]
    bodies = {
        "unconditional": camera_body(TRANSPORT, 1, {"class": "unconditional"}),
        "conditional": camera_body(
            TRANSPORT, 2, {"class": "conditional", "conditions": CONDITIONS}, 30
        ),
        "not_shared": camera_body(
            TRANSPORT, 3, {"class": "not_shared", "legal_basis": LEGAL_BASIS}, 60
        ),
        "sensor": sensor_body(TRANSPORT, 4, {"class": "unconditional"}),
        "police_camera": camera_body(POLICE, 5, {"class": "unconditional"}, 5_000),
    }
    for name, body in bodies.items():
        world.feeds[name] = await register_feed(client, body)
    return world


def gateway_path(world: World, name: str) -> str:
    return f"{world.runtime.settings.media_gateway_app}/{world.feeds[name]['stream']['media_path']}"
