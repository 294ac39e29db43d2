"""Writing the demo city to a directory, with a progress bar.

Files (all byte-identical for the same parameters):

- ``departments.json``: the department list (bodies for ``POST /v1/departments``);
- ``feeds.ndjson``: one GeoJSON Feature per line (the body for ``POST /v1/feeds/bulk``);
- ``feeds.geojson``: the same features as one FeatureCollection (for GIS tools);
- ``access-requests.ndjson``: the access-request stream of :mod:`deploy.seed.traffic`;
- ``manifest.json``: parameters, counts, the planted duplicates and the sha256 of every file.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from deploy.seed.city import BBOX, CENTRE
from deploy.seed.departments import departments as demo_departments
from deploy.seed.feeds import generate_feeds
from deploy.seed.traffic import generate_access_requests
from schemas.gb28181 import decode_gb28181

DEMO_START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
DEMO_DAYS = 7
FILES = (
    "departments.json",
    "feeds.ndjson",
    "feeds.geojson",
    "access-requests.ndjson",
)
MANIFEST = "manifest.json"


class _Out:
    """A file written under a temporary name, hashed on the way, renamed when complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.file = self.tmp.open("wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def close(self, records: int | None = None) -> dict[str, Any]:
        self.file.close()
        os.replace(self.tmp, self.path)
        info: dict[str, Any] = {"sha256": self.hash.hexdigest(), "bytes": self.size}
        if records is not None:
            info["records"] = records
        return info


def _write(path: Path, data: bytes, records: int | None = None) -> dict[str, Any]:
    out = _Out(path)
    out.write(data)
    return out.close(records)


def _ndjson(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _counts(features: list[dict[str, Any]], department_order: list[str]) -> dict[str, Any]:
    by_kind: Counter[str] = Counter()
    by_owner: dict[str, Counter[str]] = {}
    by_sharing: dict[str, Counter[str]] = {"camera": Counter(), "sensor": Counter()}
    by_protocol: Counter[str] = Counter()
    by_district: Counter[str] = Counter()
    with_fov = with_coverage = 0
    for f in features:
        p = f["properties"]
        kind = p["kind"]
        by_kind[kind] += 1
        by_owner.setdefault(p["owner"], Counter())[kind] += 1
        by_sharing[kind][p["sharing"]["class"]] += 1
        by_protocol[p["stream"]["protocol"]] += 1
        if kind == "camera":
            by_district[decode_gb28181(p["code"]).district] += 1
            with_fov += p["fov"] is not None
            with_coverage += p["coverage"] is not None
    rank = {code: i for i, code in enumerate(department_order)}
    return {
        "features": len(features),
        "by_kind": {k: by_kind[k] for k in ("camera", "sensor")},
        "by_owner": {
            owner: dict(sorted(c.items()))
            for owner, c in sorted(by_owner.items(), key=lambda kv: rank.get(kv[0], 999))
        },
        "by_sharing": {
            kind: {cls: c[cls] for cls in ("unconditional", "conditional", "not_shared")}
            for kind, c in by_sharing.items()
        },
        "by_protocol": dict(sorted(by_protocol.items())),
        "cameras_by_region": dict(sorted(by_district.items())),
        "cameras_with_fov": with_fov,
        "cameras_with_coverage": with_coverage,
    }


def write_demo_city(
    out_dir: Path,
    cameras: int = 57_000,
    sensors: int = 3_000,
    seed: int = 28181,
    requests: int = 2_000,
    progress: bool = True,
    start: datetime = DEMO_START,
) -> dict[str, Any]:
    """Generate the demo city into ``out_dir`` (created if needed) and return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        t_cameras = bar.add_task("cameras", total=cameras)
        t_sensors = bar.add_task("sensors", total=sensors)
        t_requests = bar.add_task("access requests", total=requests)
        t_files = bar.add_task("writing files", total=len(FILES) + 1)
        tasks = {"cameras": t_cameras, "sensors": t_sensors}

        def advance(stage: str, n: int) -> None:
            bar.advance(tasks[stage], n)

        depts = demo_departments()
        generated = generate_feeds(cameras, sensors, seed, progress=advance)
        features = generated.features

        request_lines: list[bytes] = []
        by_requester: Counter[str] = Counter()
        for request in generate_access_requests(features, depts, requests, seed, start, DEMO_DAYS):
            request_lines.append(orjson.dumps(request))
            by_requester[request["requester"]] += 1
            if len(request_lines) % 250 == 0:
                bar.advance(t_requests, 250)
        bar.update(t_requests, completed=requests)

        files: dict[str, dict[str, Any]] = {}
        files["departments.json"] = _write(
            out_dir / "departments.json",
            orjson.dumps(depts, option=orjson.OPT_INDENT_2) + b"\n",
            len(depts),
        )
        bar.advance(t_files)
        ndjson = _Out(out_dir / "feeds.ndjson")
        geojson = _Out(out_dir / "feeds.geojson")
        geojson.write(b'{"type":"FeatureCollection","features":[')
        for i, feature in enumerate(features):
            line = orjson.dumps(feature)
            ndjson.write(line + b"\n")
            geojson.write(line if i == 0 else b"," + line)
        geojson.write(b"]}\n")
        files["feeds.ndjson"] = ndjson.close(len(features))
        bar.advance(t_files)
        files["feeds.geojson"] = geojson.close(len(features))
        bar.advance(t_files)
        files["access-requests.ndjson"] = _write(
            out_dir / "access-requests.ndjson", _ndjson(request_lines), len(request_lines)
        )
        bar.advance(t_files)

        order = [d["code"] for d in depts]
        counts = _counts(features, order)
        counts["planted_duplicates"] = dict(
            sorted(Counter(d["kind"] for d in generated.duplicates).items())
        )
        counts["access_requests"] = len(request_lines)
        counts["access_requests_by_requester"] = {
            code: by_requester[code] for code in order if by_requester[code]
        }
        manifest: dict[str, Any] = {
            "generator": "deploy.seed",
            "format_version": 1,
            "seed": seed,
            "parameters": {
                "cameras": cameras,
                "sensors": sensors,
                "requests": requests,
                "traffic_start": start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "traffic_days": DEMO_DAYS,
            },
            "bbox": list(BBOX),
            "centre": list(CENTRE),
            "departments": len(depts),
            "counts": counts,
            "planted_duplicates": generated.duplicates,
            "files": files,
        }
        _write(out_dir / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        bar.advance(t_files)
    return manifest
