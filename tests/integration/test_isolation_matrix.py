"""Department isolation, endpoint by endpoint: A never reads or changes what is B's.

The city: B (Transport) owns feeds of every sharing class; C (Environment) asks B for two of
them (one granted, one waiting in B's inbox) and registers a camera on B's stream; B asks P
(Police) for a camera; A (Urban management), the caller, asks P for the same camera and owns
a camera nobody uses. Retrievals go through the media-server hooks, an ungranted retrieval of
B's sensor by C raises an alert, and everything reaches ClickHouse through Kafka and the stream
worker, as in test_analytics.py.

The matrix has one entry per operation of the API, enumerated from ``app.openapi()``: a new
endpoint fails ``test_the_matrix_has_an_entry_for_every_endpoint`` until its isolation is
written here. Each entry calls the endpoint as A, with every department role A holds
(requester, dept_admin, auditor, gateway; not operator, whose analytics are city-wide by
design), and proves that A sees none of B's private fields (the internal stream URL), none of
B's or C's requests, grants, inbox, audit entries or analytics rows (JSON and CSV), and that
A's attempts to change them are refused and change nothing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI

from registry_api.app import create_app
from registry_api.catalog.manscdp import render_catalog
from schemas.events import EventType
from schemas.settings import Settings, load_settings
from tests.integration.access_world import (
    CENTRE,
    ENVIRONMENT,
    POLICE,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    camera_body,
    gateway_path,
)
from tests.integration.hostile_support import changed_tables, registry_state
from tests.integration.streams_support import (
    ACCESS_TOPIC,
    Retrieval,
    close_analytics,
    fast_tuning,
    make_settings,
    produce,
    running_worker,
    wait_for_value,
)
from tests.topic_prefixes import new_topic_prefix

pytestmark = pytest.mark.kafka

A, B, C, P = URBAN, TRANSPORT, ENVIRONMENT, POLICE
A_ROLES = ("requester", "dept_admin", "auditor", "gateway")
# The owner side of grants and requests (who holds what on A's feeds): every role A has,
# operator included, and the two that may read it.
OWNER_SIDE_ROLES = (*A_ROLES, "operator")
OWNER_READERS = ("dept_admin", "auditor")


def operations_of(app: FastAPI) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, items in app.openapi()["paths"].items()
        for method in items
    }


# ------------------------------------------------------------------------------ the city


@dataclass
class Scene:
    world: World
    app: FastAPI
    settings: Settings
    ids: dict[str, str] = field(default_factory=dict)
    period: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> httpx.AsyncClient:
        return self.world.client

    def a(self, role: str = "requester") -> dict[str, str]:
        return self.world.auth(A, role)

    @property
    def private(self) -> list[str]:
        """Strings A must never receive: B's and C's internal URLs and every other key."""
        urls = [
            str(feed["stream"]["url"])
            for feed in self.world.feeds.values()
            if feed["owner"] in (B, C, P)
        ]
        keys = [key for (code, _), key in self.world.keys.items() if code != A]
        admin = [self.settings.admin_token] if self.settings.admin_token else []
        secrets = [value for name, value in self.ids.items() if name.startswith("secret")]
        return [*urls, *keys, *admin, *secrets]

    @property
    def others(self) -> list[str]:
        """Names that mark a row as B's or C's business: their codes and B's feed ids."""
        b_feeds = [str(feed["id"]) for feed in self.world.feeds.values() if feed["owner"] == B]
        return [B, C, *b_feeds]

    @property
    def b_requests(self) -> list[str]:
        return [
            self.ids["request c->b pending"],
            self.ids["request c->b"],
            self.ids["request b->p"],
        ]

    @property
    def b_grants(self) -> list[str]:
        return [self.ids["grant c->b"], self.ids["grant b->p"]]


def shows_nothing_private(scene: Scene, text: str, where: str) -> None:
    leaked = [secret for secret in scene.private if secret in text]
    assert not leaked, f"{where}: leaks {leaked}"


def shows_nothing_of_others(scene: Scene, text: str, where: str) -> None:
    shows_nothing_private(scene, text, where)
    seen = [name for name in scene.others if name in text]
    assert not seen, f"{where}: shows {seen}: {text[:300]}"


async def retrieval_token(world: World, department: str, grant_id: str) -> str:
    response = await world.retrieval(department, grant_id)
    assert response.status_code == 200, response.text
    return str(response.json()["feeds"][0]["token"])


async def build_scene(world: World, app: FastAPI, settings: Settings) -> Scene:
    scene = Scene(world, app, settings)
    client = world.client
    # A's own camera, which nobody uses (A's row in dormant feeds and scorecards).
    mine = camera_body(A, 9, {"class": "unconditional"}, 9_000)
    created = await client.post("/v1/feeds", json=mine, headers=scene.a("dept_admin"))
    assert created.status_code == 201, created.text
    world.feeds["a_camera"] = created.json()
    # C registers a camera on B's stream: a duplicate group A can list.
    copy_of_b = camera_body(C, 10, {"class": "unconditional"}, 12_000)
    copy_of_b["stream"]["url"] = world.internal_url("unconditional")
    created = await client.post("/v1/feeds", json=copy_of_b, headers=world.auth(C, "dept_admin"))
    assert created.status_code == 201, created.text
    world.feeds["c_copy_of_b"] = created.json()

    # A's second camera, which P holds a grant on: the owner side of A's grant list.
    shared = camera_body(A, 11, {"class": "unconditional"}, 9_500)
    created = await client.post("/v1/feeds", json=shared, headers=scene.a("dept_admin"))
    assert created.status_code == 201, created.text
    world.feeds["a_shared_camera"] = created.json()
    p_to_a = await world.request(P, feed_ids=[world.feed_id("a_shared_camera")])

    pending = await world.request(C, feed_ids=[world.feed_id("conditional")])
    assert pending["feeds"][0]["outcome"] == "pending", pending
    c_to_b = await world.request(C, feed_ids=[world.feed_id("unconditional")])
    b_to_p = await world.request(B, feed_ids=[world.feed_id("police_camera")])
    a_to_p = await world.request(A, feed_ids=[world.feed_id("police_camera")])
    scene.ids.update(
        {
            "request c->b pending": pending["id"],
            "request c->b": c_to_b["id"],
            "request b->p": b_to_p["id"],
            "request a->p": a_to_p["id"],
            "grant c->b": c_to_b["feeds"][0]["grant_id"],
            "grant b->p": b_to_p["feeds"][0]["grant_id"],
            "grant a->p": a_to_p["feeds"][0]["grant_id"],
            "grant p->a": p_to_a["feeds"][0]["grant_id"],
        }
    )
    assert all(scene.ids.values()), scene.ids
    for department, grant, feed in (
        (C, "grant c->b", "unconditional"),
        (B, "grant b->p", "police_camera"),
        (A, "grant a->p", "police_camera"),
    ):
        token = await retrieval_token(world, department, scene.ids[grant])
        played = await world.hook(gateway_path(world, feed), token)
        assert played.status_code == 200, played.text
    scene.ids["token a->p"] = await retrieval_token(world, A, scene.ids["grant a->p"])
    # B's GB/T 28181 platform posted its catalog (no Status: no liveness traffic meanwhile).
    posted = await client.post(
        "/v1/catalog/manscdp",
        params={"department": B},
        content=B_CATALOG,
        headers={"Content-Type": "Application/MANSCDP+xml"},
    )
    assert posted.status_code == 200 and posted.json()["channels"]["created"] == 1, posted.text
    # A retrieval of B's sensor that nobody granted: an alert between B and C.
    now = datetime.now(UTC).replace(microsecond=0)
    rogue = Retrieval(world.feed_id("sensor"), C, f"{C}-rogue", "", now, 2.0, 100)
    await produce(settings, ACCESS_TOPIC, rogue.events())
    # B's webhook subscription (a kind nothing in this scene sends: its rows stay as they are).
    subscribed = await client.post(
        "/v1/subscriptions",
        json={"url": "https://hooks.lz-jtj.example/feedgrid", "kinds": ["grant.expiring"]},
        headers=world.auth(B, "dept_admin"),
    )
    assert subscribed.status_code == 201, subscribed.text
    scene.ids["subscription b"] = subscribed.json()["id"]
    scene.ids["secret b"] = subscribed.json()["secret"]
    scene.period = {
        "from": (now - timedelta(days=1)).isoformat(),
        "to": (now + timedelta(hours=1)).isoformat(),
    }
    return scene


@pytest.fixture(scope="module")
def matrix_settings(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, sqlite_template: Path
) -> Iterator[Settings]:
    prefix = new_topic_prefix()
    settings = make_settings(
        tmp_path_factory.mktemp("isolation"), kafka_bootstrap, prefix, sqlite_template
    )
    yield settings
    close_analytics(settings)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scene(matrix_settings: Settings) -> AsyncIterator[Scene]:
    application = create_app(matrix_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://feedgrid.test",
            headers={"Authorization": f"Bearer {matrix_settings.admin_token}"},
            timeout=60,
        ) as client:
            client.app = application  # type: ignore[attr-defined]
            tuning = fast_tuning(heartbeat_silence_seconds=3_600)
            async with running_worker(matrix_settings, tuning):
                world = await build_world(client)
                built = await build_scene(world, application, matrix_settings)
                # Four hook retrievals and the rogue one; the alert it raises.
                started = await wait_for_value(
                    matrix_settings,
                    "SELECT count() FROM access_events WHERE type = 'retrieval.started'",
                    4,
                )
                assert started == 4, started
                alerts = await wait_for_value(
                    matrix_settings, "SELECT count() > 0 FROM alerts FINAL", 1
                )
                assert alerts == 1
                yield built


# ------------------------------------------------------------------------------ entries

Check = Callable[[Scene], Awaitable[None]]


async def public_and_holding_nothing_private(scene: Scene, method: str, path: str) -> None:
    for headers in ({"Authorization": ""}, scene.a()):
        response = await scene.client.request(method, path, headers=headers)
        assert response.status_code == 200, (path, response.status_code)
        shows_nothing_private(scene, response.text, path)


def public(path: str) -> Check:
    async def check(scene: Scene) -> None:
        await public_and_holding_nothing_private(scene, "GET", path)

    return check


async def departments_list(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.get("/v1/departments", headers=scene.a(role))
        assert response.status_code == 200
        shows_nothing_private(scene, response.text, role)
        assert {B, C} <= {item["code"] for item in response.json()}  # public by design


async def create_department(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.post(
            "/v1/departments",
            json={"code": "lz-a-made", "name": "made by A", "kind": "other"},
            headers=scene.a(role),
        )
        assert response.status_code == 403, (role, response.text)


async def issue_api_key(scene: Scene) -> None:
    for role in A_ROLES:
        for department in (B, C, A):  # not even for A itself: the city admin issues keys
            response = await scene.client.post(
                f"/v1/departments/{department}/api-keys",
                json={"name": "by A", "roles": ["dept_admin"]},
                headers=scene.a(role),
            )
            assert response.status_code == 403, (role, department, response.text)


async def register_feed(scene: Scene) -> None:
    world = scene.world
    as_b = camera_body(B, 60, {"class": "unconditional"})
    for role in A_ROLES:
        response = await scene.client.post("/v1/feeds", json=as_b, headers=scene.a(role))
        assert response.status_code == 403, (role, response.text)
    # A's own camera, but at the gateway path of B's feed: A's grants would open B's stream.
    hijack = camera_body(A, 61, {"class": "unconditional"})
    hijack["stream"]["media_path"] = world.feeds["not_shared"]["stream"]["media_path"]
    response = await scene.client.post("/v1/feeds", json=hijack, headers=scene.a("dept_admin"))
    assert 400 <= response.status_code < 500, f"A registered at B's media path: {response.text}"


B_PLATFORM = "62010000042002000001"
B_CHANNEL = "62010200041322000001"
B_CATALOG = render_catalog(
    sn="1",
    device_id=B_PLATFORM,
    sum_num=1,
    items=[{"DeviceID": B_CHANNEL, "Name": "南关十字球机", "ParentID": B_PLATFORM}],
)


async def post_catalog(scene: Scene) -> None:
    notify = render_catalog(
        sn="2", device_id=B_PLATFORM, sum_num=1, root="Notify",
        items=[{"DeviceID": B_CHANNEL, "Event": "DEL"}],
    )  # fmt: skip
    for role in A_ROLES:
        headers = {**scene.a(role), "Content-Type": "Application/MANSCDP+xml"}
        for params, body in (({}, notify), ({"department": B}, B_CATALOG)):
            response = await scene.client.post(
                "/v1/catalog/manscdp", params=params, content=body, headers=headers
            )
            assert response.status_code == 403, (role, params, response.text)


async def catalog_tree(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.get(
            "/v1/catalog/tree", params={"include_channels": "true"}, headers=scene.a(role)
        )
        assert response.status_code == 200, response.text
        shows_nothing_private(scene, response.text, role)
        assert B_PLATFORM in response.text  # catalog metadata is public, as feeds are


async def catalog_summary(scene: Scene) -> None:
    for role in A_ROLES:
        refused = await scene.client.get(
            "/v1/catalog/summary", params={"department": B}, headers=scene.a(role)
        )
        assert refused.status_code == 403, (role, refused.text)
        own = await scene.client.get("/v1/catalog/summary", headers=scene.a(role))
        assert own.status_code == 200 and own.json()["department"] == A, own.text
        shows_nothing_of_others(scene, own.text, role)


async def shared_catalog(scene: Scene) -> None:
    for role in A_ROLES:
        for form in ("manscdp", "geojson"):
            refused = await scene.client.get(
                "/v1/catalog/shared", params={"platform": B, "format": form}, headers=scene.a(role)
            )
            assert refused.status_code == 403, (role, refused.text)
            own = await scene.client.get(
                "/v1/catalog/shared", params={"platform": A, "format": form}, headers=scene.a(role)
            )
            assert own.status_code == 200, own.text
            shows_nothing_private(scene, own.content.decode("gb18030"), role)
            assert scene.world.feeds["not_shared"]["code"] not in own.content.decode("gb18030")


def decide_duplicates(verb: str) -> Check:
    async def check(scene: Scene) -> None:
        listed = await scene.client.get(
            "/v1/catalog/duplicates", params={"reason": "same_stream_url"}
        )
        keys = [group["key"] for group in listed.json()["groups"] if A not in group["departments"]]
        assert keys, listed.text  # B's and C's group exists: the refusal is not vacuous
        group = next(g for g in listed.json()["groups"] if g["key"] == keys[0])
        for role in A_ROLES:
            response = await scene.client.post(
                f"/v1/catalog/duplicates/{keys[0]}/{verb}",
                json={"authoritative_feed_id": group["feeds"][0]["id"]}
                if verb == "resolve"
                else {},
                headers=scene.a(role),
            )
            assert response.status_code == 403, (role, response.text)

    return check


async def duplicate_decisions(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.get("/v1/catalog/duplicates/decisions", headers=scene.a(role))
        assert response.status_code == 200, response.text
        shows_nothing_of_others(scene, response.text, role)


def b_feed_items(scene: Scene, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if item["owner"] in (B, C, P)]


async def list_feeds(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.get(
            "/v1/feeds", params={"include_retired": "true", "limit": 1000}, headers=scene.a(role)
        )
        assert response.status_code == 200
        shows_nothing_private(scene, response.text, role)
        others = b_feed_items(scene, response.json()["items"])
        assert others and all("url" not in item["stream"] for item in others)


async def feed_points(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.get("/v1/feeds/points", headers=scene.a(role))
        assert response.status_code == 200, response.text
        shows_nothing_private(scene, response.text, role)
        assert scene.world.feed_id("not_shared") in response.json()["ids"]  # public by design


async def whoami(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.get("/v1/whoami", headers=scene.a(role))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["department"], answer["roles"]) == (A, [role]), answer
        shows_nothing_of_others(scene, response.text, role)


async def search_feeds(scene: Scene) -> None:
    lon, lat = CENTRE
    area = {
        "type": "Polygon",
        "coordinates": [
            [[lon - 1, lat - 1], [lon + 1, lat - 1], [lon + 1, lat + 1], [lon - 1, lat + 1]]
            + [[lon - 1, lat - 1]]
        ],
    }
    for role in A_ROLES:
        response = await scene.client.post(
            "/v1/feeds/search", json={"geometry": area, "limit": 1000}, headers=scene.a(role)
        )
        assert response.status_code == 200, response.text
        shows_nothing_private(scene, response.text, role)
        others = b_feed_items(scene, response.json()["items"])
        assert others and all("url" not in item["stream"] for item in others)


async def bulk_import(scene: Scene) -> None:
    world = scene.world
    existing = world.feeds["unconditional"]
    new_for_b = camera_body(B, 62, {"class": "unconditional"})
    changed_b = camera_body(B, 1, {"class": "unconditional"})  # B's unconditional, renamed
    changed_b["name"] = "renamed by A"
    assert changed_b["code"] == existing["code"]
    hijack = camera_body(A, 63, {"class": "unconditional"})
    hijack["stream"]["media_path"] = existing["stream"]["media_path"]
    features = []
    for body in (new_for_b, changed_b, hijack):
        properties = dict(body)
        location = properties.pop("location")
        features.append({"type": "Feature", "geometry": location, "properties": properties})
    response = await scene.client.post(
        "/v1/feeds/bulk",
        content=b"\n".join(orjson.dumps(feature) for feature in features),
        headers={**scene.a("dept_admin"), "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["updated"]) == (0, 0), result
    assert sorted(reject["index"] for reject in result["rejected"]) == [0, 1, 2], result


async def get_feed(scene: Scene) -> None:
    for name, feed in scene.world.feeds.items():
        if feed["owner"] == A:
            continue
        own = await scene.client.get(f"/v1/feeds/{feed['id']}")  # the city admin
        assert "url" in own.json()["stream"], name
        for role in A_ROLES:
            response = await scene.client.get(f"/v1/feeds/{feed['id']}", headers=scene.a(role))
            assert response.status_code == 200, (name, role)
            assert "url" not in response.json()["stream"], (name, role)
            shows_nothing_private(scene, response.text, f"{name} as {role}")


async def patch_feed(scene: Scene) -> None:
    for name in ("unconditional", "conditional", "not_shared", "sensor", "police_camera"):
        feed_id = scene.world.feed_id(name)
        version = (await scene.client.get(f"/v1/feeds/{feed_id}")).headers["etag"]
        for role in A_ROLES:
            response = await scene.client.patch(
                f"/v1/feeds/{feed_id}",
                json={"name": "taken over by A", "sharing": {"class": "unconditional"}},
                headers={**scene.a(role), "If-Match": version},
            )
            assert response.status_code == 403, (name, role, response.text)


async def retire_feed(scene: Scene) -> None:
    for name in ("unconditional", "not_shared", "police_camera"):
        feed_id = scene.world.feed_id(name)
        version = (await scene.client.get(f"/v1/feeds/{feed_id}")).headers["etag"]
        for role in A_ROLES:
            response = await scene.client.delete(
                f"/v1/feeds/{feed_id}", headers={**scene.a(role), "If-Match": version}
            )
            assert response.status_code == 403, (name, role, response.text)


async def duplicates(scene: Scene) -> None:
    for role in A_ROLES:
        response = await scene.client.get("/v1/catalog/duplicates", headers=scene.a(role))
        assert response.status_code == 200, response.text
        shows_nothing_private(scene, response.text, role)
        groups = [
            group for group in response.json()["groups"] if group["reason"] == "same_stream_url"
        ]
        members = {member["id"] for group in groups for member in group["feeds"]}
        assert scene.world.feed_id("unconditional") in members  # the group is listed, URL-less


async def heartbeats(scene: Scene) -> None:
    items = [
        {"feed_id": str(feed["id"]), "status": "offline"}
        for feed in scene.world.feeds.values()
        if feed["owner"] != A
    ]
    response = await scene.client.post(
        "/v1/heartbeats", json={"items": items}, headers=scene.a("gateway")
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["accepted"], result["status_changed"]) == (0, 0), result
    assert len(result["rejected"]) == len(items)


async def request_access(scene: Scene) -> None:
    body = {
        "feed_ids": [scene.world.feed_id("not_shared")],
        "purpose": "traffic management",
        "actions": ["live"],
    }
    for smuggled in (
        {"requester_department": B},
        {"requester": f"key:{B}"},
        {"department": B},
        {"owner_department": A},
    ):
        for role in ("requester", "dept_admin"):
            response = await scene.client.post(
                "/v1/access-requests", json={**body, **smuggled}, headers=scene.a(role)
            )
            assert response.status_code == 422, (smuggled, role, response.text)


async def list_requests(scene: Scene) -> None:
    for role in ("requester", "dept_admin", "auditor"):
        for params in (
            {},
            {"scope": "owner"},
            {"scope": "requester"},
            {"scope": "owner", "status": "pending"},
            {"scope": "requester", "status": "granted"},
        ):
            response = await scene.client.get(
                "/v1/access-requests", params=params, headers=scene.a(role)
            )
            if response.status_code == 403:  # the inbox needs dept_admin or auditor
                continue
            assert response.status_code == 200, (role, params, response.text)
            shows_nothing_of_others(scene, response.text, f"{role} {params}")
            assert not {item["id"] for item in response.json()} & set(scene.b_requests)
    mine = await scene.client.get("/v1/access-requests", headers=scene.a("requester"))
    assert scene.ids["request a->p"] in {item["id"] for item in mine.json()}


async def get_request(scene: Scene) -> None:
    for request_id in scene.b_requests:
        for role in A_ROLES:
            response = await scene.client.get(
                f"/v1/access-requests/{request_id}", headers=scene.a(role)
            )
            assert response.status_code in (403, 404), (request_id, role, response.text)
            shows_nothing_of_others(scene, response.text, f"{request_id} as {role}")


def decide(verb: str) -> Check:
    """Deciding on a request A cannot see answers exactly as for one that does not exist: no
    status or message may tell A that the request exists or which feeds it holds."""

    async def check(scene: Scene) -> None:
        bodies = [{}, *({"feed_ids": [scene.world.feed_id(name)]} for name in scene.world.feeds)]
        for request_id in [*scene.b_requests, "0" * 32]:
            for role in A_ROLES:
                for body in bodies:
                    response = await scene.client.post(
                        f"/v1/access-requests/{request_id}/{verb}",
                        json=body,
                        headers=scene.a(role),
                    )
                    expected = (
                        (404, "unknown_access_request")
                        if role == "dept_admin"
                        else (403, "role_required")
                    )
                    answer = (response.status_code, response.json()["code"])
                    assert answer == expected, (request_id, role, body, response.text)

    return check


async def list_grants(scene: Scene) -> None:
    for role in A_ROLES:
        for params in (
            {},
            {"scope": "owner"},
            {"active": "false"},
            {"scope": "owner", "active": "false"},
        ):
            response = await scene.client.get("/v1/grants", params=params, headers=scene.a(role))
            if response.status_code == 403:
                continue
            assert response.status_code == 200, (role, params, response.text)
            shows_nothing_of_others(scene, response.text, f"{role} {params}")
    mine = await scene.client.get("/v1/grants", headers=scene.a("requester"))
    assert scene.ids["grant a->p"] in {grant["id"] for grant in mine.json()}
    # Who holds what on A's own feeds: read by A's dept_admin and auditor only, the same rule
    # as one grant (below) and the owner's inbox.
    for role in OWNER_SIDE_ROLES:
        response = await scene.client.get(
            "/v1/grants", params={"scope": "owner"}, headers=scene.a(role)
        )
        if role in OWNER_READERS:
            assert response.status_code == 200, (role, response.text)
            assert scene.ids["grant p->a"] in {grant["id"] for grant in response.json()}
        else:
            assert response.status_code == 403, (role, response.text)
            assert response.json()["code"] == "role_required"
            assert scene.ids["grant p->a"] not in response.text


async def get_grant(scene: Scene) -> None:
    for grant_id in scene.b_grants:
        for role in A_ROLES:
            response = await scene.client.get(f"/v1/grants/{grant_id}", headers=scene.a(role))
            assert response.status_code in (403, 404), (grant_id, role, response.text)
            shows_nothing_of_others(scene, response.text, f"{grant_id} as {role}")
    on_a_feed = scene.ids["grant p->a"]
    for role in OWNER_SIDE_ROLES:
        response = await scene.client.get(f"/v1/grants/{on_a_feed}", headers=scene.a(role))
        expected = 200 if role in OWNER_READERS else 404
        assert response.status_code == expected, (role, response.text)


async def revoke_grant(scene: Scene) -> None:
    for grant_id in scene.b_grants:
        for role in A_ROLES:
            response = await scene.client.post(
                f"/v1/grants/{grant_id}/revoke", json={"reason": "A says so"}, headers=scene.a(role)
            )
            assert response.status_code in (403, 404), (grant_id, role, response.text)


async def grant_retrieval(scene: Scene) -> None:
    for grant_id in scene.b_grants:
        for role in A_ROLES:
            response = await scene.client.get(
                f"/v1/grants/{grant_id}/retrieval", headers=scene.a(role)
            )
            assert response.status_code in (403, 404), (grant_id, role, response.text)
            assert "token" not in response.text, (grant_id, role)


async def grant_sessions(scene: Scene) -> None:
    """The sessions a grant holds open: as for the grant itself, B's stay hidden (the same 404
    as a grant that does not exist), A's own grant shows, and the owner side of A's feeds
    only to A's dept_admin and auditor."""
    for grant_id in [*scene.b_grants, "0" * 32]:
        for role in A_ROLES:
            response = await scene.client.get(
                f"/v1/grants/{grant_id}/sessions", headers=scene.a(role)
            )
            assert (response.status_code, response.json()["code"]) == (404, "unknown_grant"), (
                grant_id,
                role,
                response.text,
            )
            shows_nothing_of_others(scene, response.text, f"{grant_id} sessions as {role}")
    own = await scene.client.get(
        f"/v1/grants/{scene.ids['grant a->p']}/sessions", headers=scene.a("requester")
    )
    assert own.status_code == 200 and isinstance(own.json(), list), own.text
    on_a_feed = scene.ids["grant p->a"]
    for role in OWNER_SIDE_ROLES:
        response = await scene.client.get(f"/v1/grants/{on_a_feed}/sessions", headers=scene.a(role))
        expected = 200 if role in OWNER_READERS else 404
        assert response.status_code == expected, (role, response.text)


async def audit_entries(scene: Scene) -> None:
    b_feed = scene.world.feed_id("unconditional")
    filters: list[dict[str, Any]] = [
        {},
        {"department": B},
        {"department": C},
        {"feed_id": b_feed},
        {"grant_id": scene.ids["grant c->b"]},
        {"request_id": scene.ids["request c->b"]},
        {"event_type": "feedgrid.access.requested"},
    ]
    response = await scene.client.get("/v1/audit", headers=scene.a("auditor"))
    assert response.status_code == 200, response.text
    assert response.json()["entries"], "A's auditor sees A's own entries"
    for params in filters:
        response = await scene.client.get(
            "/v1/audit", params={**params, "limit": 1000}, headers=scene.a("auditor")
        )
        assert response.status_code == 200, (params, response.text)
        for entry in response.json()["entries"]:
            parties = {entry["requester_department"], entry["owner_department"]}
            assert A in parties, (params, entry)
        shows_nothing_private(scene, response.text, f"audit {params}")
        hidden = [name for name in (C, *scene.b_requests, *scene.b_grants) if name in response.text]
        assert not hidden, (params, hidden)
    for role in ("requester", "dept_admin", "gateway"):
        refused = await scene.client.get("/v1/audit", headers=scene.a(role))
        assert refused.status_code == 403, role


async def audit_verify(scene: Scene) -> None:
    response = await scene.client.get("/v1/audit/verify", headers=scene.a("auditor"))
    assert response.status_code == 200
    assert set(response.json()) <= {
        "ok", "entries_checked", "last_seq", "first_broken_seq", "problem", "message",
    }  # fmt: skip
    shows_nothing_of_others(scene, response.text, "verify")


def hook(path: str) -> Check:
    """A's gateway, with A's token: B's feeds stay shut, and nothing of B's comes back."""

    async def check(scene: Scene) -> None:
        world = scene.world
        token = scene.ids["token a->p"]
        for feed in ("unconditional", "not_shared", "sensor"):
            app, stream = gateway_path(world, feed).split("/", 1)
            bodies = {
                "mediamtx": {"action": "read", "path": f"{app}/{stream}", "token": token},
                "zlmediakit": {
                    "schema": "rtsp",
                    "app": app,
                    "stream": stream,
                    "params": f"token={token}",
                    "id": "s-a",
                    "totalBytes": 10_000_000,
                    "duration": 60.0,
                    "player": True,
                },  # fmt: skip
            }
            form = {"app": app, "name": stream, "token": token, "addr": "10.9.9.9"}
            server = path.split("/")[3]
            kwargs: dict[str, Any] = (
                {"data": form} if server == "nginx-rtmp" else {"json": bodies[server]}
            )
            response = await scene.client.post(path, headers=scene.a("gateway"), **kwargs)
            shows_nothing_private(scene, response.text, f"{path} {feed}")
            if path.endswith(("/auth", "/on_play")):
                refused = response.status_code in (401, 403) or response.json().get("code") != 0
                assert refused, (path, feed, response.status_code, response.text)
        # A session end with A's token at B's feed is not put on A's grant, nor on any of B's.
        await world.runtime.access.hook_events.flush()
        audit = await scene.client.get(
            "/v1/audit", params={"event_type": EventType.RETRIEVAL_ENDED, "limit": 1000}
        )
        b_feeds = {world.feed_id(name) for name in ("unconditional", "not_shared", "sensor")}
        for entry in audit.json()["entries"]:
            if entry["feed_id"] in b_feeds:
                assert entry["grant_id"] not in (scene.ids["grant a->p"], *scene.b_grants), entry
                assert entry["requester_department"] in (None, ""), entry

    return check


def analytics(path: str, counterpart_rows: bool = True) -> Check:
    """A's analytics (JSON and CSV, with and without filters naming B) hold no row of B's."""

    async def check(scene: Scene) -> None:
        b_feed = scene.world.feed_id("unconditional")
        filters: list[dict[str, Any]] = [
            {},
            {"owner_department": B},
            {"requester_department": C},
            {"owner_department": [B, C], "requester_department": [B, C]},
            {"feed_id": b_feed},
        ]
        names = {item["name"] for item in operation_parameters(scene.app, "GET", path)}
        for role in ("requester", "dept_admin", "auditor", "gateway"):
            for extra in filters:
                params = {**scene.period, **{k: v for k, v in extra.items() if k in names}}
                for accept in ("application/json", "text/csv"):
                    response = await scene.client.get(
                        path, params=params, headers={**scene.a(role), "Accept": accept}
                    )
                    if response.status_code == 422:  # a filter this answer cannot apply
                        assert response.json()["code"] == "unsupported_filter", response.text
                        continue
                    assert response.status_code == 200, (role, params, response.text)
                    shows_nothing_of_others(scene, response.text, f"{role} {accept} {params}")
                    if accept == "text/csv":
                        rows = list(csv.DictReader(io.StringIO(response.text)))
                        json_rows = (
                            await scene.client.get(path, params=params, headers=scene.a(role))
                        ).json()["rows"]
                        assert len(rows) == len(json_rows), (role, params)
        own = await scene.client.get(path, params=scene.period, headers=scene.a("requester"))
        assert own.json()["scope"] == A
        if counterpart_rows:  # A's own business is there: the checks above are not vacuous
            assert own.json()["rows"] and A in own.text, own.text
        city = await scene.client.get(path, params=scene.period)  # the city admin sees B
        assert any(name in city.text for name in scene.others) or path.endswith(
            ("/dormant-feeds", "/scorecards")
        ), city.text

    return check


def operation_parameters(app: FastAPI, method: str, path: str) -> list[dict[str, Any]]:
    return list(app.openapi()["paths"][path][method.lower()].get("parameters", []))


def b_key_ids(scene: Scene) -> list[str]:
    return [key.split("_", 2)[1] for (code, _), key in scene.world.keys.items() if code == B]


async def list_api_keys(scene: Scene) -> None:
    for role in A_ROLES:
        for department in (B, C):
            response = await scene.client.get(
                f"/v1/departments/{department}/api-keys", headers=scene.a(role)
            )
            assert response.status_code == 403, (role, department, response.text)
            shows_nothing_of_others(scene, response.text, f"{department} keys as {role}")
    own = await scene.client.get(f"/v1/departments/{A}/api-keys", headers=scene.a("dept_admin"))
    assert own.status_code == 200, own.text
    assert {item["department"] for item in own.json()} == {A}
    shows_nothing_of_others(scene, own.text, "A's own keys")
    assert all("key" not in item for item in own.json())


def change_key(action: str, body: dict[str, Any]) -> Check:
    """Rotating or revoking B's keys: refused, under B's path and under A's alike."""

    async def check(scene: Scene) -> None:
        for key in b_key_ids(scene):
            for role in A_ROLES:
                response = await scene.client.post(
                    f"/v1/departments/{B}/api-keys/{key}/{action}", json=body, headers=scene.a(role)
                )
                assert response.status_code == 403, (key, role, response.text)
            response = await scene.client.post(
                f"/v1/departments/{A}/api-keys/{key}/{action}",
                json=body,
                headers=scene.a("dept_admin"),
            )
            assert response.status_code == 404, (key, response.text)
            assert response.json()["code"] == "unknown_key"
            shows_nothing_of_others(scene, response.text, f"{action} {key}")

    return check


async def create_subscription(scene: Scene) -> None:
    for role in A_ROLES:
        for department in (B, C):
            response = await scene.client.post(
                "/v1/subscriptions",
                json={
                    "url": "https://hooks.lz-cgj.example/steal",
                    "kinds": ["request.pending", "request.overdue"],
                    "department": department,
                },
                headers=scene.a(role),
            )
            assert response.status_code == 403, (role, department, response.text)


async def list_subscriptions(scene: Scene) -> None:
    for role in A_ROLES:
        for params in ({}, {"department": B}, {"department": C}):
            response = await scene.client.get(
                "/v1/subscriptions", params=params, headers=scene.a(role)
            )
            if role == "dept_admin" and not params:
                assert response.status_code == 200, response.text
                assert response.json() == []
            else:
                assert response.status_code == 403, (role, params, response.text)
            shows_nothing_of_others(scene, response.text, f"{role} {params}")
    city = await scene.client.get("/v1/subscriptions")  # the city admin sees B's
    assert scene.ids["subscription b"] in city.text and scene.ids["secret b"] not in city.text


def on_b_subscription(method: str, suffix: str = "") -> Check:
    """B's subscription, read, deleted, listed or pinged by A: as if it did not exist."""

    async def check(scene: Scene) -> None:
        path = f"/v1/subscriptions/{scene.ids['subscription b']}{suffix}"
        for role in A_ROLES:
            response = await scene.client.request(method, path, headers=scene.a(role))
            assert response.status_code == 404, (role, response.text)
            assert response.json()["code"] == "unknown_subscription"
            shows_nothing_of_others(scene, response.text, f"{method} {path} as {role}")

    return check


MATRIX: dict[str, Check] = {
    "GET /healthz": public("/healthz"),
    "GET /readyz": public("/readyz"),
    "GET /metrics": public("/metrics"),
    "GET /.well-known/jwks.json": public("/.well-known/jwks.json"),
    "GET /v1/departments": departments_list,
    "POST /v1/departments": create_department,
    "POST /v1/departments/{code}/api-keys": issue_api_key,
    "GET /v1/departments/{code}/api-keys": list_api_keys,
    "POST /v1/departments/{code}/api-keys/{key_id}/rotate": change_key(
        "rotate", {"grace_seconds": 60}
    ),
    "POST /v1/departments/{code}/api-keys/{key_id}/revoke": change_key(
        "revoke", {"reason": "A says so"}
    ),
    "POST /v1/subscriptions": create_subscription,
    "GET /v1/subscriptions": list_subscriptions,
    "GET /v1/subscriptions/{subscription_id}": on_b_subscription("GET"),
    "DELETE /v1/subscriptions/{subscription_id}": on_b_subscription("DELETE"),
    "GET /v1/subscriptions/{subscription_id}/deliveries": on_b_subscription("GET", "/deliveries"),
    "POST /v1/subscriptions/{subscription_id}/ping": on_b_subscription("POST", "/ping"),
    "POST /v1/feeds": register_feed,
    "GET /v1/feeds": list_feeds,
    "GET /v1/feeds/points": feed_points,
    "POST /v1/feeds/search": search_feeds,
    "GET /v1/whoami": whoami,
    "POST /v1/feeds/bulk": bulk_import,
    "GET /v1/feeds/{feed_id}": get_feed,
    "PATCH /v1/feeds/{feed_id}": patch_feed,
    "DELETE /v1/feeds/{feed_id}": retire_feed,
    "GET /v1/catalog/duplicates": duplicates,
    "POST /v1/catalog/manscdp": post_catalog,
    "GET /v1/catalog/tree": catalog_tree,
    "GET /v1/catalog/summary": catalog_summary,
    "GET /v1/catalog/shared": shared_catalog,
    "POST /v1/catalog/duplicates/{key}/resolve": decide_duplicates("resolve"),
    "POST /v1/catalog/duplicates/{key}/dismiss": decide_duplicates("dismiss"),
    "GET /v1/catalog/duplicates/decisions": duplicate_decisions,
    "POST /v1/heartbeats": heartbeats,
    "POST /v1/access-requests": request_access,
    "GET /v1/access-requests": list_requests,
    "GET /v1/access-requests/{request_id}": get_request,
    "POST /v1/access-requests/{request_id}/approve": decide("approve"),
    "POST /v1/access-requests/{request_id}/deny": decide("deny"),
    "GET /v1/grants": list_grants,
    "GET /v1/grants/{grant_id}": get_grant,
    "POST /v1/grants/{grant_id}/revoke": revoke_grant,
    "GET /v1/grants/{grant_id}/retrieval": grant_retrieval,
    "GET /v1/grants/{grant_id}/sessions": grant_sessions,
    "GET /v1/audit": audit_entries,
    "GET /v1/audit/verify": audit_verify,
    "POST /v1/hooks/mediamtx/auth": hook("/v1/hooks/mediamtx/auth"),
    "POST /v1/hooks/zlmediakit/on_play": hook("/v1/hooks/zlmediakit/on_play"),
    "POST /v1/hooks/zlmediakit/on_flow_report": hook("/v1/hooks/zlmediakit/on_flow_report"),
    "POST /v1/hooks/nginx-rtmp/on_play": hook("/v1/hooks/nginx-rtmp/on_play"),
    "POST /v1/hooks/nginx-rtmp/on_play_done": hook("/v1/hooks/nginx-rtmp/on_play_done"),
    "GET /v1/analytics/usage": analytics("/v1/analytics/usage"),
    "GET /v1/analytics/sharing-matrix": analytics("/v1/analytics/sharing-matrix"),
    "GET /v1/analytics/top-feeds": analytics("/v1/analytics/top-feeds"),
    "GET /v1/analytics/alerts": analytics("/v1/analytics/alerts", counterpart_rows=False),
    "GET /v1/analytics/decisions": analytics("/v1/analytics/decisions"),
    "GET /v1/analytics/dormant-feeds": analytics("/v1/analytics/dormant-feeds"),
    "GET /v1/analytics/scorecards": analytics("/v1/analytics/scorecards"),
}
# Session ends are recorded whatever the token (the gateway is trusted city infrastructure):
# for these, "nothing changed" allows the retrieval.ended entries besides the denials.
RECORDS_SESSION_ENDS = {
    "POST /v1/hooks/zlmediakit/on_flow_report",
    "POST /v1/hooks/nginx-rtmp/on_play_done",
}
OPERATIONS = operations_of(create_app(load_settings(admin_token="operations-" + "x" * 16)))


def test_the_matrix_has_an_entry_for_every_endpoint() -> None:
    missing = sorted(OPERATIONS - set(MATRIX))
    stale = sorted(set(MATRIX) - OPERATIONS)
    assert not missing, f"endpoints without an isolation entry: {missing}"
    assert not stale, f"entries for endpoints that no longer exist: {stale}"


# The hooks go last: A's refused attempts on B's feeds are A's own business (A may then see
# them as its denied retrievals), and must not blur what the other entries prove.
ORDER = sorted(
    OPERATIONS & set(MATRIX), key=lambda operation: ("/v1/hooks/" in operation, operation)
)


@pytest.mark.asyncio(loop_scope="module")  # the scene is built once for the module
@pytest.mark.parametrize("operation", ORDER)
async def test_department_a_neither_reads_nor_changes_what_is_b_s(
    scene: Scene, operation: str
) -> None:
    ignored = (
        (EventType.RETRIEVAL_DENIED, EventType.RETRIEVAL_ENDED)
        if operation in RECORDS_SESSION_ENDS
        else (EventType.RETRIEVAL_DENIED,)
    )
    before = await registry_state(scene.world.runtime, ignored)
    await MATRIX[operation](scene)
    assert changed_tables(before, await registry_state(scene.world.runtime, ignored)) == []
