"""The deterministic demo city (deploy/seed): contract of the features, determinism, planted
duplicates, sharing proportions and the access-traffic generator."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from shapely.geometry import LinearRing, Point, shape
from typer.testing import CliRunner

from deploy.seed.city import BBOX, DISTRICTS, haversine_m
from deploy.seed.cli import seed_app
from deploy.seed.departments import CAMERA_OWNERS, department_codes, departments, kind_of
from deploy.seed.feeds.cameras import make_gb_code
from deploy.seed.feeds.tables import CAMERA_ACTIONS, INDUSTRIES_BY_KIND, PURPOSES, SENSOR_ACTIONS
from deploy.seed.traffic import generate_access_requests
from deploy.seed.writer import DEMO_START, write_demo_city
from schemas.gb28181 import decode_gb28181
from schemas.identity import DepartmentCreate

SMALL = {"cameras": 5000, "sensors": 400, "requests": 400}
SEED = 28181
OWNER_KIND = {code: kind for kind, code in CAMERA_OWNERS.items()}
DISTRICT_CODES = {d.code for d in DISTRICTS}
MEDIA_PATH = re.compile(r"^[A-Za-z0-9._/-]+$")
SENSOR_CODE = re.compile(r"^(lz-[a-z]+)-([a-z]{2})-(\d{6})$")
PROPERTY_KEYS = {
    "kind",
    "code",
    "owner",
    "name",
    "altitude",
    "fov",
    "coverage",
    "stream",
    "datastreams",
    "catalog",
    "sharing",
    "tags",
}
CATALOG_KEYS = {
    "resource_name",
    "resource_code",
    "abstract",
    "format",
    "classification",
    "update_cycle",
    "open_to_public",
    "publish_date",
    "related_codes",
}


def _write_small(out: Path, seed: int) -> dict[str, Any]:
    return write_demo_city(
        out,
        cameras=SMALL["cameras"],
        sensors=SMALL["sensors"],
        requests=SMALL["requests"],
        seed=seed,
        progress=False,
    )


def _read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("city")
    return out, _write_small(out, SEED)


@pytest.fixture(scope="module")
def features(city: tuple[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    return _read_ndjson(city[0] / "feeds.ndjson")


@pytest.fixture(scope="module")
def cameras(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in features if f["properties"]["kind"] == "camera"]


@pytest.fixture(scope="module")
def planted(city: tuple[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    return city[1]["planted_duplicates"]


# --------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_does_not(
    city: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, manifest = city
    again = _write_small(tmp_path / "again", SEED)
    assert again["files"] == manifest["files"]
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (
        out / "manifest.json"
    ).read_bytes()
    other = _write_small(tmp_path / "other", SEED + 1)
    for name in ("feeds.ndjson", "feeds.geojson", "access-requests.ndjson"):
        assert other["files"][name]["sha256"] != manifest["files"][name]["sha256"]
    # the departments do not depend on the seed
    assert other["files"]["departments.json"] == manifest["files"]["departments.json"]


def test_manifest_hashes_and_files_agree(city: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = city
    assert set(manifest["files"]) == {
        "departments.json",
        "feeds.ndjson",
        "feeds.geojson",
        "access-requests.ndjson",
    }
    for name, info in manifest["files"].items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert len(data) == info["bytes"]
    lines = _read_ndjson(out / "feeds.ndjson")
    collection = orjson.loads((out / "feeds.geojson").read_bytes())
    assert collection["type"] == "FeatureCollection"
    assert collection["features"] == lines
    assert orjson.loads((out / "departments.json").read_bytes()) == departments()
    assert manifest["seed"] == SEED
    counts = manifest["counts"]
    assert counts["by_kind"] == {"camera": SMALL["cameras"], "sensor": SMALL["sensors"]}
    assert sum(sum(c.values()) for c in counts["by_owner"].values()) == len(lines)
    assert counts["access_requests"] == SMALL["requests"]
    assert not list(out.glob("*.tmp"))


# --------------------------------------------------------------------------------- departments


def test_departments_are_valid_bodies_for_the_api() -> None:
    depts = departments()
    assert len(depts) == 24
    codes = [d["code"] for d in depts]
    assert len(set(codes)) == len(codes)
    for d in depts:
        DepartmentCreate.model_validate(d)
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,31}", d["code"])
        assert 2 <= d["answer_deadline_days"] <= 10
        assert set(d) == {"code", "name", "kind", "answer_deadline_days"}
    kinds = Counter(d["kind"] for d in depts)
    for kind in ("public_security", "urban_management", "transport", "environment"):
        assert kinds[kind] >= 1
    depts[0]["code"] = "mutated"
    assert departments()[0]["code"] != "mutated"


# ------------------------------------------------------------------------------- feature shape


def test_every_feature_follows_the_bulk_import_contract(features: list[dict[str, Any]]) -> None:
    codes = set(department_codes())
    for f in features:
        assert f["type"] == "Feature"
        assert f["geometry"]["type"] == "Point"
        lon, lat = f["geometry"]["coordinates"]
        assert BBOX[0] <= lon <= BBOX[2] and BBOX[1] <= lat <= BBOX[3]
        assert round(lon, 6) == lon and round(lat, 6) == lat
        p = f["properties"]
        assert set(p) == PROPERTY_KEYS
        assert p["owner"] in codes
        assert p["name"] and p["name"].isascii()
        assert p["altitude"] is None or 1400 < p["altitude"] < 2300
        stream = p["stream"]
        assert set(stream) == {"protocol", "url", "media_path"}
        assert stream["protocol"] in {"rtsp", "rtmp", "hls", "webrtc", "gb28181", "mqtt", "http"}
        assert stream["url"].split("://")[0] in {"rtsp", "rtmp", "http", "gb28181", "mqtt"}
        assert MEDIA_PATH.fullmatch(stream["media_path"]) and ".." not in stream["media_path"]
        assert stream["media_path"] == f"{p['owner']}/{p['code']}"
        catalog = p["catalog"]
        assert set(catalog) == CATALOG_KEYS
        assert catalog["classification"] in {"basic", "theme", "department"}
        assert catalog["update_cycle"] in {"realtime", "minute", "hour", "day"}
        assert isinstance(catalog["open_to_public"], bool)
        if catalog["open_to_public"]:
            assert p["sharing"]["class"] == "unconditional"
        assert date(2019, 1, 1) <= date.fromisoformat(catalog["publish_date"]) <= date(2025, 1, 1)
        assert all(isinstance(c, str) for c in catalog["related_codes"])
        assert all(isinstance(t, str) and t for t in p["tags"])
        if p["kind"] == "camera":
            assert p["datastreams"] == []
            assert catalog["format"] in {"video/H.264", "video/H.265"}
            assert stream["protocol"] not in {"mqtt", "http"}
        else:
            assert p["kind"] == "sensor"
            assert p["fov"] is None and p["coverage"] is None
            assert catalog["format"] == "application/json"
            assert stream["protocol"] in {"mqtt", "http"}
            assert p["datastreams"]
            for ds in p["datastreams"]:
                assert set(ds) == {"name", "observed_property", "unit"} and all(ds.values())
            m = SENSOR_CODE.fullmatch(p["code"])
            assert m and m.group(1) == p["owner"]
    resource_codes = [f["properties"]["catalog"]["resource_code"] for f in features]
    assert len(set(resource_codes)) == len(resource_codes)
    assert set().union(*(f["properties"]["catalog"]["related_codes"] for f in features)) <= set(
        resource_codes
    )


def test_owners_and_kinds(features: list[dict[str, Any]]) -> None:
    cams = Counter(
        f["properties"]["owner"] for f in features if f["properties"]["kind"] == "camera"
    )
    assert set(cams) == set(CAMERA_OWNERS.values())
    assert 0.55 <= cams["lz-psb"] / SMALL["cameras"] <= 0.65
    assert cams.most_common(1)[0][0] == "lz-psb"
    sensors = Counter(
        f["properties"]["owner"] for f in features if f["properties"]["kind"] == "sensor"
    )
    assert sensors["lz-eeb"] + sensors["lz-tb"] + sensors["lz-wab"] >= 0.8 * SMALL["sensors"]


# ------------------------------------------------------------------------------ GB/T 28181 codes


def test_gb_code_helpers() -> None:
    code = make_gb_code("62010200", "00", "132", "0", 42)
    assert code == "62010200001320000042"
    decoded = decode_gb28181(code)
    assert (decoded.region, decoded.industry, decoded.type_code, decoded.network) == (
        "62010200",
        "00",
        "132",
        "0",
    )
    assert decoded.serial == "000042"
    with pytest.raises(ValueError):
        make_gb_code("62010200", "00", "132", "0", 1_000_000)  # a seventh serial digit
    with pytest.raises(ValueError):
        make_gb_code("62010200", "99", "132", "0", 1)  # no such industry


def test_camera_codes_decode_consistently(
    cameras: list[dict[str, Any]], planted: list[dict[str, Any]]
) -> None:
    same_code_lines = {d["duplicate"]["line"] for d in planted if d["kind"] == "same_code"}
    same_code_codes = {d["duplicate"]["code"] for d in planted if d["kind"] == "same_code"}
    for line, f in enumerate(cameras):
        p = f["properties"]
        parts = decode_gb28181(p["code"]).as_dict()
        assert parts["region"].startswith("6201")
        assert parts["region"][:6] in DISTRICT_CODES
        assert parts["type"] in {"121", "131", "132"}
        kind = OWNER_KIND[p["owner"]]
        if line in same_code_lines:
            # the public-security device code, re-registered by another department
            assert p["code"] in same_code_codes
            assert parts["industry"] in INDUSTRIES_BY_KIND["public_security"]
            continue
        assert parts["industry"] in INDUSTRIES_BY_KIND[kind]
        if parts["type"] == "121":
            assert parts["industry"] == "05"
        if kind == "public_security":
            assert parts["network"] in {"0", "1", "5"}
        else:
            assert parts["network"] in {"2", "6", "8"}
    networks = Counter(
        f["properties"]["code"][13] for f in cameras if f["properties"]["owner"] == "lz-psb"
    )
    assert networks["0"] + networks["1"] >= 0.9 * sum(networks.values())


def test_codes_unique_except_the_planted_duplicates(
    features: list[dict[str, Any]], cameras: list[dict[str, Any]], planted: list[dict[str, Any]]
) -> None:
    assert planted, "a 5,000-camera city must have planted duplicates"
    assert {d["kind"] for d in planted} == {
        "same_code",
        "same_stream_url",
        "nearby_overlapping_view",
    }
    transport_urban = sum(1 for f in cameras if f["properties"]["owner"] in ("lz-tb", "lz-cmb"))
    assert len(planted) == max(1, round(0.005 * transport_urban))
    for d in planted:
        orig = features[d["original"]["line"]]["properties"]
        dup = features[d["duplicate"]["line"]]["properties"]
        assert orig["owner"] == d["original"]["owner"] == "lz-psb"
        assert dup["owner"] == d["duplicate"]["owner"] in ("lz-tb", "lz-cmb")
        assert orig["code"] == d["original"]["code"] and dup["code"] == d["duplicate"]["code"]
        assert orig["stream"]["url"] == d["original"]["stream_url"]
        assert dup["stream"]["url"] == d["duplicate"]["stream_url"]

    codes = Counter(f["properties"]["code"] for f in features)
    repeated = {c: n for c, n in codes.items() if n > 1}
    assert set(repeated.values()) <= {2}
    assert set(repeated) == {d["original"]["code"] for d in planted if d["kind"] == "same_code"}

    urls = Counter(f["properties"]["stream"]["url"] for f in features)
    repeated_urls = {u: n for u, n in urls.items() if n > 1}
    assert set(repeated_urls.values()) <= {2}
    assert set(repeated_urls) == {
        d["original"]["stream_url"] for d in planted if d["kind"] == "same_stream_url"
    }


def _heading_delta(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_only_the_planted_pairs_sit_within_3_m(
    features: list[dict[str, Any]], planted: list[dict[str, Any]]
) -> None:
    for kind in ("camera", "sensor"):
        cell = 3.0 / 111_000.0 * 1.5  # degrees, generous
        grid: dict[tuple[int, int], list[int]] = {}
        close: set[tuple[int, int]] = set()
        for i, f in enumerate(features):
            if f["properties"]["kind"] != kind:
                continue
            lon, lat = f["geometry"]["coordinates"]
            cx, cy = math.floor(lon / cell), math.floor(lat / cell)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for j in grid.get((cx + dx, cy + dy), ()):
                        olon, olat = features[j]["geometry"]["coordinates"]
                        if haversine_m(lon, lat, olon, olat) <= 3.0:
                            close.add((min(i, j), max(i, j)))
            grid.setdefault((cx, cy), []).append(i)
        expected = set()
        if kind == "camera":
            for d in planted:
                if d["kind"] == "nearby_overlapping_view":
                    a, b = d["original"]["line"], d["duplicate"]["line"]
                    expected.add((min(a, b), max(a, b)))
        assert close == expected
    for d in planted:
        a = features[d["original"]["line"]]["properties"]
        b = features[d["duplicate"]["line"]]["properties"]
        assert a["fov"] and b["fov"] and a["fov"]["angle"] == b["fov"]["angle"]
        assert _heading_delta(a["fov"]["heading"], b["fov"]["heading"]) <= 15.0
        if d["kind"] == "nearby_overlapping_view":
            assert d["distance_m"] <= 3.0
            assert a["code"] != b["code"] and a["stream"]["url"] != b["stream"]["url"]
        else:  # found by exactly one rule: the code or the URL, not the position
            assert 3.0 < d["distance_m"] <= 16.0


def test_positions_are_denser_along_the_valley(cameras: list[dict[str, Any]]) -> None:
    def share(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
        inside = sum(
            1
            for f in cameras
            if lon0 <= f["geometry"]["coordinates"][0] <= lon1
            and lat0 <= f["geometry"]["coordinates"][1] <= lat1
        )
        return inside / len(cameras)

    box_area = (BBOX[2] - BBOX[0]) * (BBOX[3] - BBOX[1])
    centre = share(103.78, 36.03, 103.88, 36.09)
    assert centre > 5 * (0.10 * 0.06) / box_area  # at least 5x the uniform density
    south_hills = share(103.5, 35.9, 103.65, 36.0)
    assert south_hills < (0.15 * 0.1) / box_area


# -------------------------------------------------------------------------------------- sharing


def test_sharing_proportions(features: list[dict[str, Any]], cameras: list[dict[str, Any]]) -> None:
    classes = Counter(f["properties"]["sharing"]["class"] for f in cameras)
    n = len(cameras)
    assert abs(classes["unconditional"] / n - 0.55) < 0.04
    assert abs(classes["conditional"] / n - 0.38) < 0.04
    assert abs(classes["not_shared"] / n - 0.07) < 0.02
    not_shared = [f for f in cameras if f["properties"]["sharing"]["class"] == "not_shared"]
    internal = sum(
        1
        for f in not_shared
        if f["properties"]["owner"] == "lz-psb" and f["properties"]["code"][8:10] == "02"
    )
    assert internal / len(not_shared) > 0.6
    sensors = [f for f in features if f["properties"]["kind"] == "sensor"]
    sensor_classes = Counter(f["properties"]["sharing"]["class"] for f in sensors)
    assert sensor_classes["unconditional"] / len(sensors) > 0.75


def test_sharing_blocks_are_complete(features: list[dict[str, Any]]) -> None:
    codes = set(department_codes())
    for f in features:
        p = f["properties"]
        sharing = p["sharing"]
        assert set(sharing) == {"class", "conditions", "legal_basis"}
        cls = sharing["class"]
        if cls == "not_shared":
            assert isinstance(sharing["legal_basis"], str) and sharing["legal_basis"].strip()
            assert sharing["conditions"] is None
        elif cls == "unconditional":
            assert sharing["conditions"] is None and sharing["legal_basis"] is None
        else:
            assert cls == "conditional"
            c = sharing["conditions"]
            assert set(c) == {"departments", "purposes", "actions", "max_duration_minutes", "area"}
            assert c["departments"] and set(c["departments"]) <= codes
            assert p["owner"] not in c["departments"]
            assert c["purposes"] and set(c["purposes"]) <= set(PURPOSES)
            allowed = CAMERA_ACTIONS if p["kind"] == "camera" else SENSOR_ACTIONS
            assert c["actions"] and set(c["actions"]) <= set(allowed)
            assert c["max_duration_minutes"] is None or c["max_duration_minutes"] > 0
            assert c["area"] is None


# ---------------------------------------------------------------------------- FOV and coverage


def test_fields_of_view_in_range(cameras: list[dict[str, Any]]) -> None:
    with_fov = [f["properties"]["fov"] for f in cameras if f["properties"]["fov"] is not None]
    assert len(with_fov) > 0.85 * len(cameras)
    for fov in with_fov:
        assert set(fov) == {"heading", "angle", "range_m"}
        assert 0 <= fov["heading"] < 360
        assert 1 <= fov["angle"] <= 360
        assert 10 <= fov["range_m"] <= 300
    assert any(fov["angle"] == 360 for fov in with_fov)


def test_coverage_polygons_are_valid(cameras: list[dict[str, Any]]) -> None:
    covered = [f for f in cameras if f["properties"]["coverage"] is not None]
    assert 0.003 * len(cameras) <= len(covered) <= 0.02 * len(cameras)
    for f in covered:
        poly_json = f["properties"]["coverage"]
        assert poly_json["type"] == "Polygon" and len(poly_json["coordinates"]) == 1
        ring = poly_json["coordinates"][0]
        assert ring[0] == ring[-1] and 4 <= len(ring) <= 32
        assert LinearRing(ring).is_ccw
        polygon = shape(poly_json)
        assert polygon.is_valid and polygon.area > 0
        camera = Point(f["geometry"]["coordinates"])
        assert polygon.buffer(1e-6).contains(camera)  # the camera is on (or in) its coverage


# ------------------------------------------------------------------------------ access traffic


def test_access_requests_are_deterministic_and_referential(
    features: list[dict[str, Any]],
) -> None:
    depts = departments()
    start = datetime(2025, 3, 3, tzinfo=UTC)
    first = list(generate_access_requests(features, depts, 600, 5, start))
    assert first == list(generate_access_requests(features, depts, 600, 5, start))
    assert first != list(generate_access_requests(features, depts, 600, 6, start))
    assert len(first) == 600

    codes = {f["properties"]["code"] for f in features}
    dept_codes = {d["code"] for d in depts}
    stamps = []
    for r in first:
        assert set(r) == {
            "requester",
            "purpose",
            "action",
            "duration_minutes",
            "emergency",
            "selection",
            "at",
        }
        assert r["requester"] in dept_codes
        assert r["purpose"] in PURPOSES
        assert r["action"] in set(CAMERA_ACTIONS) | {"read"}
        assert isinstance(r["duration_minutes"], int) and r["duration_minutes"] >= 1
        assert isinstance(r["emergency"], bool)
        sel = r["selection"]
        if "feed_codes" in sel:
            assert set(sel) == {"feed_codes"}
            assert sel["feed_codes"] and set(sel["feed_codes"]) <= codes
        else:
            assert set(sel) == {"near", "kind", "department"}
            lon, lat, metres = sel["near"]
            assert BBOX[0] <= lon <= BBOX[2] and BBOX[1] <= lat <= BBOX[3] and metres > 0
            assert sel["kind"] in {"camera", "sensor"}
            assert sel["department"] is None or sel["department"] in dept_codes
        at = datetime.strptime(r["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert start <= at <= start + timedelta(days=7, hours=3)
        stamps.append(at)
    assert stamps == sorted(stamps)

    emergencies = [r for r in first if r["emergency"]]
    assert emergencies and {r["requester"] for r in emergencies} == {"lz-psb"}
    volume = Counter(r["requester"] for r in first)
    top4 = sum(n for _, n in volume.most_common(4))
    assert top4 > 0.5 * len(first)  # a few departments make most requests
    # transport and emergency management mostly look for cameras near incidents
    near = [r for r in first if "near" in r["selection"] and r["requester"] in ("lz-tb", "lz-emb")]
    assert sum(r["selection"]["kind"] == "camera" for r in near) > 0.8 * len(near) > 0
    hours = Counter(datetime.strptime(r["at"], "%Y-%m-%dT%H:%M:%SZ").hour for r in first)
    assert sum(hours[h] for h in range(8, 19)) > 2 * sum(hours[h] for h in (0, 1, 2, 3, 4, 5))


def test_access_request_file_references_the_city(
    city: tuple[Path, dict[str, Any]], features: list[dict[str, Any]]
) -> None:
    out, manifest = city
    requests = _read_ndjson(out / "access-requests.ndjson")
    assert len(requests) == SMALL["requests"]
    codes = {f["properties"]["code"] for f in features}
    for r in requests:
        kind_of(r["requester"])  # known department
        assert set(r["selection"].get("feed_codes", [])) <= codes
    assert requests[0]["at"] >= DEMO_START.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_traffic_needs_departments_and_survives_an_empty_city() -> None:
    with pytest.raises(ValueError):
        list(generate_access_requests([], [], 3, 1, DEMO_START))
    requests = list(generate_access_requests([], departments(), 5, 1, DEMO_START))
    assert len(requests) == 5
    assert all("near" in r["selection"] for r in requests)


# ----------------------------------------------------------------------------------- CLI, scale


def test_cli_help_and_small_run(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(seed_app, ["--help"])
    assert shown.exit_code == 0
    assert "--load" in shown.output and "--seed" in shown.output
    out = tmp_path / "cli"
    result = runner.invoke(
        seed_app,
        [
            "--out",
            str(out),
            "--cameras",
            "300",
            "--sensors",
            "30",
            "--requests",
            "20",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["counts"]["by_kind"] == {"camera": 300, "sensor": 30}
    refused = runner.invoke(
        seed_app, ["--out", str(out), "--cameras", "1", "--load"], env={"FEEDGRID_ADMIN_TOKEN": ""}
    )
    assert refused.exit_code == 2


def test_zero_counts(tmp_path: Path) -> None:
    manifest = write_demo_city(tmp_path, cameras=0, sensors=0, requests=0, progress=False)
    assert manifest["counts"]["features"] == 0 and manifest["planted_duplicates"] == []
    assert (tmp_path / "feeds.ndjson").read_bytes() == b""


def test_full_reference_city(tmp_path: Path) -> None:
    manifest = write_demo_city(tmp_path, progress=False)
    counts = manifest["counts"]
    assert counts["by_kind"] == {"camera": 57_000, "sensor": 3_000}
    assert manifest["parameters"]["cameras"] == 57_000 and manifest["seed"] == 28181
    assert 60 <= len(manifest["planted_duplicates"]) <= 120
    assert manifest["files"]["feeds.ndjson"]["records"] == 60_000
