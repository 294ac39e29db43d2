"""The dashboard: its page and assets, the API paths it calls, and GET /v1/feeds/points.

The page must work on an offline network under a strict Content-Security-Policy, so the tests
check that it loads nothing from elsewhere and runs no inline code. The points endpoint must
answer exactly what the feed list finds (it reads the same in-memory index) with public
fields only.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import jsonschema
import pytest

from registry_api.feeds import points as points_module
from tests.integration.feeds_support import (
    POLICE,
    TRANSPORT,
    URBAN,
    as_feature,
    build_city,
    camera,
    gb_code,
    go_live,
    offset,
    sensor,
)

STATIC = Path(__file__).parents[2] / "registry_api" / "dashboard" / "static"
API_JS = STATIC / "api.js"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
POINT_FIELDS = {
    "count",
    "ids",
    "lon",
    "lat",
    "kind",
    "status",
    "owner",
    "kinds",
    "statuses",
    "owners",
}
# The only absolute URL the assets may hold: the SVG namespace, which is a name, not a fetch.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def _assert_documented(client: httpx.AsyncClient, path: str, answer: Any) -> None:
    """The answer conforms to the schema the OpenAPI documents for the path's 200."""
    schema = client.app.openapi()  # type: ignore[attr-defined]
    documented = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    jsonschema.validate(answer, {**documented["schema"], "components": schema["components"]})


class _PageParts(HTMLParser):
    """Every referenced URL, every script element and any inline style of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.inline_styles: list[str] = []
        self._in_script = False
        self.script_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.references.append(str(attributes[name]))
        if "style" in attributes:
            self.inline_styles.append(f"{tag} style=")
        if tag == "style":
            self.inline_styles.append("<style>")
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def _assert_strict_policy(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split("; ")}
    assert directives["default-src"] == ["'none'"], policy
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == ["'self'"], policy
    assert "unsafe" not in policy and "http" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_page_and_assets_are_self_contained_under_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    anonymous = {"Authorization": ""}  # the page itself needs no token: sign-in is in it
    page = await client.get("/dashboard", headers=anonymous)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    _assert_strict_policy(page)
    parts = _PageParts()
    parts.feed(page.text)
    assert parts.inline_styles == []
    assert parts.script_text == "", "inline script would break the Content-Security-Policy"
    assert parts.scripts and all(script.get("src") for script in parts.scripts)

    # Fetch the page's references, then every module the scripts import, transitively.
    pending = [urljoin("/dashboard", reference) for reference in parts.references]
    assert all(not re.match(r"^[a-z]+:|^//", ref) for ref in parts.references), parts.references
    fetched: dict[str, str] = {}
    while pending:
        path = pending.pop()
        if path in fetched:
            continue
        response = await client.get(path, headers=anonymous)
        assert response.status_code == 200, path
        suffix = Path(path).suffix
        assert response.headers["content-type"].startswith(ASSET_TYPES[suffix]), path
        _assert_strict_policy(response)
        fetched[path] = response.text
        if suffix == ".js":
            for module in re.findall(r'from\s+"(\./[\w.-]+\.js)"', response.text):
                pending.append(urljoin(path, module))
    served = {Path(path).name for path in fetched}
    assert served == {path.name for path in STATIC.iterdir() if path.suffix in ASSET_TYPES}
    for path, text in [("/dashboard", page.text), *fetched.items()]:
        # nothing from another origin: no URL but the SVG namespace, no @import, no url()
        assert re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text.replace(SVG_NAMESPACE, "")) == [], (
            path
        )
        assert "@import" not in text and "url(" not in text, path
        assert "innerHTML" not in text and "eval(" not in text, path

    missing = await client.get("/dashboard/assets/index.py", headers=anonymous)
    assert missing.status_code == 404 and missing.json()["code"] == "no_such_asset"
    traversal = await client.get("/dashboard/assets/..%2F..%2Fapp.py", headers=anonymous)
    assert traversal.status_code == 404


async def test_the_page_calls_only_documented_api_paths(client: httpx.AsyncClient) -> None:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    called: set[str] = set()
    for script in STATIC.glob("*.js"):
        called.update(re.findall(r"[\"'`](/v1/[^\"'`?]*)[\"'`]", script.read_text()))
    assert {"/v1/feeds/points", "/v1/feeds/{feed_id}", "/v1/whoami"} <= called
    assert {"/v1/access-requests", "/v1/grants/{grant_id}/revoke"} <= called
    # Endpoints other branches bring (the page asks the OpenAPI first and hides their panel).
    block = re.search(r"OPTIONAL_PATHS = Object\.freeze\(\{(.*?)\}\)", API_JS.read_text(), re.S)
    assert block is not None
    optional = set(re.findall(r'"(/v1/[^"]*)"', block.group(1)))
    assert {path for path in called - optional if path not in schema["paths"]} == set()
    assert not [path for path in schema["paths"] if path.startswith("/dashboard")]
    points = schema["paths"]["/v1/feeds/points"]["get"]["responses"]["200"]
    reference = points["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][reference]["properties"]) == POINT_FIELDS


async def _register_city(client: httpx.AsyncClient) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Feeds of three departments around the centre and one far away; some of them land in
    the index's base snapshot (merged), the later ones in its delta, one is moved after the
    merge (its base row superseded), one is retired, and one reports online."""
    city = await build_city(client)
    early = {
        "north_cam": camera(POLICE, 1, at=offset(0, 300)),
        "east_cam": camera(TRANSPORT, 2, at=offset(400, 0), code=gb_code(2, industry="05")),
        "air": sensor(URBAN, 3, at=offset(-200, -100)),
        "moved": camera(URBAN, 4, at=offset(100, 100), code=gb_code(4, industry="08")),
    }
    lines = b"\n".join(json.dumps(as_feature(body)).encode() for body in early.values())
    imported = await client.post(
        "/v1/feeds/bulk", content=lines, headers={"Content-Type": "application/x-ndjson"}
    )
    assert imported.status_code == 200, imported.text
    assert not imported.json()["rejected"], imported.json()
    await city.runtime.feed_index.merge()
    listed = (await client.get("/v1/feeds", params={"limit": 1000})).json()["items"]
    feeds = {name: next(i for i in listed if i["code"] == b["code"]) for name, b in early.items()}
    feeds["far"] = await city.register(camera(TRANSPORT, 5, at=[116.39, 39.91]))
    feeds["west_air"] = await city.register(sensor(POLICE, 6, at=offset(-900, 50)))
    feeds["gone"] = await city.register(camera(POLICE, 7, at=offset(10, 10)))

    moved = await client.patch(
        f"/v1/feeds/{feeds['moved']['id']}",
        json={"location": {"type": "Point", "coordinates": offset(-600, 500)}},
        headers={"If-Match": f'"{feeds["moved"]["version"]}"'},
    )
    assert moved.status_code == 200, moved.text
    retired = await client.delete(
        f"/v1/feeds/{feeds['gone']['id']}", headers={"If-Match": f'"{feeds["gone"]["version"]}"'}
    )
    assert retired.status_code == 200, retired.text
    await go_live(city, feeds["east_cam"]["id"], "online")  # a worker's transition, applied
    return city, feeds


def _as_rows(answer: dict[str, Any]) -> dict[str, tuple[float, float, str, str, str]]:
    """Feed id -> (lon, lat, kind, status, owner), decoded from the columns."""
    count = answer["count"]
    for name in ("ids", "lon", "lat", "kind", "status", "owner"):
        assert len(answer[name]) == count, name
    assert answer["owners"] == sorted(set(answer["owners"]))
    rows = {
        feed_id: (
            lon,
            lat,
            answer["kinds"][kind],
            answer["statuses"][status],
            answer["owners"][owner],
        )
        for feed_id, lon, lat, kind, status, owner in zip(
            answer["ids"], answer["lon"], answer["lat"], answer["kind"], answer["status"],
            answer["owner"], strict=True,
        )
    }  # fmt: skip
    assert len(rows) == count, "a feed appears twice"
    return rows


async def test_points_answer_exactly_what_the_feed_list_finds(client: httpx.AsyncClient) -> None:
    city, feeds = await _register_city(client)
    box = ",".join(str(value) for value in (*offset(-700, -200), *offset(500, 600)))
    filters: list[dict[str, str]] = [
        {},
        {"kind": "camera"},
        {"kind": "sensor"},
        {"department": URBAN},
        {"department": TRANSPORT, "kind": "camera"},
        {"bbox": box},
        {"bbox": box, "kind": "camera"},
        {"bbox": box, "department": POLICE},
        {"department": "lz-nobody"},
    ]
    answers = []
    for params in filters:
        response = await client.get("/v1/feeds/points", params=params)
        assert response.status_code == 200, (params, response.text)
        assert set(response.json()) == POINT_FIELDS
        _assert_documented(client, "/v1/feeds/points", response.json())
        rows = _as_rows(response.json())
        listed = (await client.get("/v1/feeds", params={**params, "limit": 1000})).json()
        expected = {
            item["id"]: (
                *item["location"]["coordinates"],
                item["kind"],
                item["status"],
                item["owner"],
            )
            for item in listed["items"]
        }
        assert rows.keys() == expected.keys(), params
        for feed_id, (lon, lat, *attributes) in rows.items():
            want_lon, want_lat, *want_attributes = expected[feed_id]
            assert math.isclose(lon, want_lon, abs_tol=1e-6), (params, feed_id)
            assert math.isclose(lat, want_lat, abs_tol=1e-6), (params, feed_id)
            assert attributes == want_attributes, (params, feed_id)
        assert feeds["gone"]["id"] not in rows  # retired feeds stay off the map
        answers.append((params, rows, response.text))

    every = answers[0][1]
    assert len(every) == 6 == len(city.runtime.feed_index) - 1  # the index minus the retired
    assert every[feeds["east_cam"]["id"]][3] == "online"
    moved_lon, moved_lat = offset(-600, 500)
    assert math.isclose(every[feeds["moved"]["id"]][0], moved_lon, abs_tol=1e-6)
    assert math.isclose(every[feeds["moved"]["id"]][1], moved_lat, abs_tol=1e-6)
    boxed = next(rows for params, rows, _ in answers if params == {"bbox": box})
    assert feeds["far"]["id"] not in boxed and feeds["moved"]["id"] in boxed
    assert next(rows for params, rows, _ in answers if params == {"department": "lz-nobody"}) == {}
    for _, _, text in answers:  # public fields only: no stream address, whoever asks
        assert "rtsp://" not in text and "mqtt://" not in text and "media_path" not in text

    # Any department sees the same public map (positions, kinds, owners are public).
    as_department = await client.get("/v1/feeds/points", headers=city.as_(URBAN, "requester"))
    assert as_department.status_code == 200
    assert _as_rows(as_department.json()) == every


async def test_points_and_whoami_need_a_valid_token(client: httpx.AsyncClient) -> None:
    for path in ("/v1/feeds/points", "/v1/whoami"):
        missing = await client.get(path, headers={"Authorization": ""})
        assert missing.status_code == 401 and missing.json()["code"] == "missing_token", path
        forged = await client.get(path, headers={"Authorization": "Bearer fga_not-a-real-key"})
        assert forged.status_code == 401 and forged.json()["code"] == "invalid_token", path

    city = await build_city(client)
    admin = (await client.get("/v1/whoami")).json()
    assert admin == {
        "subject": "city-admin",
        "department": None,
        "roles": ["city_admin"],
        "analytics_scope": "city",
    }
    _assert_documented(client, "/v1/whoami", admin)
    requester = (await client.get("/v1/whoami", headers=city.as_(POLICE, "requester"))).json()
    _assert_documented(client, "/v1/whoami", requester)
    assert requester["department"] == POLICE and requester["roles"] == ["requester"]
    assert requester["analytics_scope"] == POLICE


BAD_FILTERS = [
    ({"bbox": "103.8,36.0,103.9"}, "bbox takes 4"),
    ({"bbox": "103.9,36.0,103.8,36.1"}, "minimum must not exceed"),
    ({"bbox": "west,south,east,north"}, "bbox takes 4"),
    ({"bbox": "190,0,191,1"}, "longitude"),
    ({"bbox": "0,-95,1,1"}, "latitude"),
    ({"bbox": "nan,nan,nan,nan"}, "longitude"),
    ({"kind": "drone"}, "kind"),
    ({"department": "Not A Code!"}, "department"),
]


async def test_points_refuse_bad_filters_with_a_reason(client: httpx.AsyncClient) -> None:
    for params, reason in BAD_FILTERS:
        response = await client.get("/v1/feeds/points", params=params)
        assert response.status_code == 422, (params, response.text)
        body = response.json()
        assert body["message"] and reason in json.dumps(body), (params, body)


async def test_points_are_gzip_compressed_for_clients_that_accept_it(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    city = await build_city(client)
    for serial in range(3):
        await city.register(camera(POLICE, serial, at=offset(serial * 50, 0)))
    plain = await client.get("/v1/feeds/points", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json()["count"] == 3
    # small answers go out as they are; lower the threshold to compress this one
    monkeypatch.setattr(points_module, "COMPRESS_FROM_BYTES", 0)
    raw: list[bytes] = []
    async with client.stream(
        "GET", "/v1/feeds/points", headers={"Accept-Encoding": "gzip"}
    ) as compressed:
        assert compressed.headers["content-encoding"] == "gzip"
        assert compressed.headers["vary"] == "Accept-Encoding"
        async for chunk in compressed.aiter_raw():
            raw.append(chunk)
    assert json.loads(gzip.decompress(b"".join(raw))) == plain.json()


def test_up_prints_the_dashboard_address(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.cli import _print_welcome

    _print_welcome("http://127.0.0.1:8000", "fga_example")
    printed = capsys.readouterr().out
    assert re.search(r"^\s+dashboard\s+http://127\.0\.0\.1:8000/dashboard$", printed, re.M)
