"""Phase 1 of the generation: camera records (owner, GB/T 28181 code, position, field of view,
sharing class, protocol), numbered by the counters shared with the later phases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploy.seed import departments as deps
from deploy.seed.city import (
    Rand,
    district_of,
)
from deploy.seed.feeds.positions import Placement, PointSource
from deploy.seed.feeds.tables import (
    CAMERA_MIN_SPACING_M,
    CAMERA_OWNER_KINDS,
    CAMERA_PROTOCOLS,
    CAMERA_SHARING,
    INDUSTRY,
    NETWORK,
    PLACEMENT,
    SHARING_CLASSES,
    ProgressCallback,
)
from schemas.gb28181 import decode_gb28181


def make_gb_code(region8: str, industry: str, type_code: str, network: str, serial: int) -> str:
    """The GB/T 28181 code of these parts, checked by the registry's own decoder
    (:class:`schemas.gb28181.InvalidGbCode`, a ValueError, when a part is not one)."""
    return decode_gb28181(f"{region8}{industry}{type_code}{network}{serial:06d}").code


@dataclass
class Camera:
    owner_kind: str
    owner: str
    industry: str
    type_code: str
    network: str
    place: Placement
    code: str
    fov: dict[str, Any] | None
    sharing: str
    protocol: str
    host: int
    stream_from: int | None = None  # same_stream_url duplicate: index of the camera it copies


class Counters:
    def __init__(self) -> None:
        self.gb_serial: dict[tuple[str, str, str], int] = {}
        self.host: dict[str, int] = {}
        self.resource: dict[tuple[str, str], int] = {}
        self.sensor_serial: dict[tuple[str, str], int] = {}
        self.names: dict[tuple[str, str], int] = {}

    def gb_code(self, region8: str, industry: str, type_code: str, network: str) -> str:
        key = (region8, industry, type_code)
        serial = self.gb_serial.get(key, 0) + 1
        self.gb_serial[key] = serial
        return make_gb_code(region8, industry, type_code, network, serial)

    def next_host(self, owner: str) -> int:
        n = self.host.get(owner, 0)
        self.host[owner] = n + 1
        return n

    def resource_code(self, owner: str, letter: str) -> str:
        n = self.resource.get((owner, letter), 0) + 1
        self.resource[(owner, letter)] = n
        return f"620100-{owner.upper()}-{letter}{n:07d}"

    def name(self, place: str, site: str) -> int:
        n = self.names.get((place, site), 0) + 1
        self.names[(place, site)] = n
        return n


def wrap_heading(h: float) -> float:
    h = round(h % 360.0, 1)
    return 0.0 if h >= 360.0 else h


def _camera_fov(rng: Rand, type_code: str, place: Placement) -> dict[str, Any] | None:
    along = place.bearing is not None and place.component == "road"
    if type_code == "121":  # checkpoint: looks along the road, narrow and short
        base = (place.bearing or 0.0) + (180.0 if rng.chance(0.5) else 0.0)
        heading = base + rng.normal(0, 4) if along else rng.uniform(0, 360)
        return {
            "heading": wrap_heading(heading),
            "angle": rng.randint(20, 45),
            "range_m": rng.randint(20, 60),
        }
    if rng.chance(0.08):
        return None
    if rng.chance(0.16):  # dome / PTZ
        return {
            "heading": wrap_heading(rng.uniform(0, 360)),
            "angle": 360,
            "range_m": rng.randint(80, 300),
        }
    if along and rng.chance(0.7):
        base = (place.bearing or 0.0) + (180.0 if rng.chance(0.5) else 0.0)
        heading = base + rng.normal(0, 20)
    else:
        heading = rng.uniform(0, 360)
    return {
        "heading": wrap_heading(heading),
        "angle": rng.randint(30, 110),
        "range_m": rng.randint(15, 160),
    }


def pick_sharing_class(rng: Rand, probs: tuple[float, float, float]) -> str:
    u = rng.random()
    if u < probs[0]:
        return SHARING_CLASSES[0]
    if u < probs[0] + probs[1]:
        return SHARING_CLASSES[1]
    return SHARING_CLASSES[2]


def generate_cameras(
    count: int, seed: int, counters: Counters, progress: ProgressCallback | None
) -> tuple[list[Camera], PointSource]:
    rng = Rand(f"feedgrid-demo:{seed}:cameras")
    source = PointSource(CAMERA_MIN_SPACING_M)
    cams: list[Camera] = []
    components = ("road", "centre", "uniform")
    for i in range(count):
        kind = rng.weighted(CAMERA_OWNER_KINDS)
        owner = deps.CAMERA_OWNERS[kind]
        industry = rng.weighted(INDUSTRY[kind])
        if industry == "05" and rng.chance(0.6):
            type_code = "121"
        else:
            type_code = "132" if rng.chance(0.7) else "131"
        network = rng.weighted(NETWORK[kind])
        mix = PLACEMENT[industry]
        u = rng.random()
        component = components[0 if u < mix[0] else 1 if u < mix[0] + mix[1] else 2]
        place = source.draw(rng, component)
        region8 = district_of(place.lon, place.lat).code + "00"
        code = counters.gb_code(region8, industry, type_code, network)
        fov = _camera_fov(rng, type_code, place)
        sharing = pick_sharing_class(rng, CAMERA_SHARING[industry])
        protocol = rng.weighted(CAMERA_PROTOCOLS[kind])
        cams.append(
            Camera(
                kind,
                owner,
                industry,
                type_code,
                network,
                place,
                code,
                fov,
                sharing,
                protocol,
                counters.next_host(owner),
            )
        )
        if progress and (i + 1) % 1000 == 0:
            progress("cameras", 1000)
    if progress and count % 1000:
        progress("cameras", count % 1000)
    return cams, source
