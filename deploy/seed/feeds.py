"""Generation of the demo city's feeds: GeoJSON Features in the bulk-import format.

Three phases, each with its own seeded stream so that, for example, the number of sensors
never changes the cameras:

1. cameras: owner, GB/T 28181 code parts, position (road / district centre / uniform mixture,
   with a minimum spacing so that no two feeds sit within a few metres of each other by
   accident), field of view, sharing class and stream protocol;
2. planted duplicates: ~0.5 % of the transport and urban-management cameras are turned into
   re-registrations of a public-security road camera (same GB code, same stream URL, or a
   position within 3 m with an overlapping field of view);
3. everything derived from the final positions: names, tags, altitude, catalog entry, stream
   URLs, the odd explicit coverage polygon; then the sensors.

The result is deterministic for a given (cameras, sensors, seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from deploy.seed import departments as deps
from deploy.seed.city import (
    BBOX,
    DISTRICTS,
    METRES_PER_DEG_LAT,
    PLACES,
    RIVER,
    ROADS,
    LineSampler,
    Rand,
    WeightedTable,
    destination,
    district_of,
    haversine_m,
    in_bbox,
    metres_per_deg_lon,
    offset,
)

Feature = dict[str, Any]
ProgressCallback = Callable[[str, int], None]

# ---------------------------------------------------------------------------------------------
# Static tables

CAMERA_OWNER_KINDS = WeightedTable(
    [
        ("public_security", 0.60),
        ("urban_management", 0.17),
        ("transport", 0.15),
        ("environment", 0.08),
    ]
)

# GB/T 28181 digits 9-10 allowed for each owner kind.
INDUSTRIES_BY_KIND: dict[str, tuple[str, ...]] = {
    "public_security": ("00", "01", "02", "03"),
    "transport": ("04", "05", "06", "07"),
    "urban_management": ("08",),
    "environment": ("09",),
}
_INDUSTRY = {
    "public_security": WeightedTable([("00", 0.50), ("01", 0.30), ("02", 0.12), ("03", 0.08)]),
    "transport": WeightedTable([("04", 0.60), ("05", 0.30), ("06", 0.05), ("07", 0.05)]),
    "urban_management": WeightedTable([("08", 1.0)]),
    "environment": WeightedTable([("09", 1.0)]),
}
_NETWORK = {
    "public_security": WeightedTable([("0", 0.55), ("1", 0.40), ("5", 0.05)]),
    "transport": WeightedTable([("2", 0.65), ("6", 0.30), ("8", 0.05)]),
    "urban_management": WeightedTable([("2", 0.45), ("6", 0.55)]),
    "environment": WeightedTable([("2", 0.60), ("6", 0.40)]),
}
CAMERA_TYPES = ("121", "131", "132")

# (road, centre, uniform) mixture per industry: overall about 45 / 35 / 20.
_PLACEMENT = {
    "00": (0.65, 0.25, 0.10),
    "01": (0.20, 0.55, 0.25),
    "02": (0.10, 0.60, 0.30),
    "03": (0.35, 0.35, 0.30),
    "04": (0.80, 0.08, 0.12),
    "05": (0.85, 0.05, 0.10),
    "06": (0.20, 0.50, 0.30),
    "07": (0.50, 0.20, 0.30),
    "08": (0.40, 0.45, 0.15),
    "09": (0.20, 0.30, 0.50),
}

# (unconditional, conditional, not_shared) per industry: overall about 55 / 38 / 7.
_CAMERA_SHARING = {
    "00": (0.55, 0.44, 0.01),
    "01": (0.35, 0.63, 0.02),
    "02": (0.00, 0.20, 0.80),
    "03": (0.45, 0.50, 0.05),
    "04": (0.72, 0.27, 0.01),
    "05": (0.62, 0.35, 0.03),
    "06": (0.40, 0.50, 0.10),
    "07": (0.70, 0.28, 0.02),
    "08": (0.72, 0.27, 0.01),
    "09": (0.80, 0.20, 0.00),
}
SHARING_CLASSES = ("unconditional", "conditional", "not_shared")

_CAMERA_PROTOCOLS = {
    "public_security": WeightedTable([("rtsp", 0.55), ("gb28181", 0.45)]),
    "transport": WeightedTable([("rtsp", 0.50), ("gb28181", 0.38), ("hls", 0.07), ("rtmp", 0.05)]),
    "urban_management": WeightedTable([("rtsp", 0.60), ("gb28181", 0.28), ("hls", 0.12)]),
    "environment": WeightedTable([("rtsp", 0.65), ("gb28181", 0.20), ("webrtc", 0.15)]),
}

# Second octet of each owner's private address block (10.x.0.0/15).
_IP_BASE = {deps.PSB: 12, deps.TB: 14, deps.CMB: 16, deps.EEB: 18, deps.WAB: 22}
_MQTT_BROKER = {deps.EEB: 5, deps.TB: 6, deps.WAB: 7, deps.CMB: 8}
# The owner's GB/T 28181 central signalling server (type 200), as the SIP platform id.
_SIP_PLATFORM = {
    deps.PSB: "62010000002000000001",
    deps.TB: "62010000042002000001",
    deps.CMB: "62010000082006000001",
    deps.EEB: "62010000092006000001",
}

PURPOSES = (
    "traffic management",
    "emergency response",
    "city management",
    "environmental monitoring",
    "public safety",
    "flood control",
)
CAMERA_ACTIONS = ("live", "playback", "snapshot", "ptz", "download")
SENSOR_ACTIONS = ("read", "download")

_AFFINITY: dict[str, tuple[str, ...]] = {
    deps.PSB: (deps.TB, deps.EMB, deps.FIRE, deps.CMB, "lz-procur", "lz-justice", "lz-cgdo"),
    deps.TB: (deps.PSB, deps.EMB, deps.FIRE, deps.CMB, "lz-data", "lz-hurd"),
    deps.CMB: (deps.PSB, deps.TB, "lz-hurd", "lz-amr", "lz-cgdo", deps.EMB),
    deps.EEB: (deps.HC, deps.WAB, "lz-meteo", deps.EMB, "lz-nrb", "lz-agri", "lz-forest"),
    deps.WAB: (deps.EMB, deps.FIRE, "lz-meteo", "lz-nrb", deps.EEB, "lz-agri", deps.CMB),
}
_OWNER_PURPOSES: dict[str, tuple[str, ...]] = {
    deps.PSB: ("public safety", "emergency response", "traffic management"),
    deps.TB: ("traffic management", "emergency response", "public safety"),
    deps.CMB: ("city management", "public safety", "emergency response"),
    deps.EEB: ("environmental monitoring", "emergency response", "city management"),
    deps.WAB: ("flood control", "emergency response", "environmental monitoring"),
}
_LEGAL_BASIS: dict[str, tuple[str, ...]] = {
    deps.PSB: (
        "People's Police Law of the PRC (2012 revision): video of public security internal "
        "facilities is restricted to police duties",
        "Law of the PRC on Guarding State Secrets (2024 revision): the camera covers a "
        "classified site",
        "Counter-espionage Law of the PRC (2023 revision): security-sensitive location",
        "Anti-terrorism Law of the PRC (2018 revision): protection target of key importance",
    ),
    deps.TB: (
        "Data Security Law of the PRC (2021): important data of the transport network",
        "Regulations on the Security Protection of Critical Information Infrastructure "
        "(State Council, 2021): control-centre video",
    ),
    deps.CMB: (
        "Personal Information Protection Law of the PRC (2021): the camera covers a "
        "residential courtyard",
    ),
    deps.EEB: (
        "Data Security Law of the PRC (2021): monitoring data under verification before release",
    ),
    deps.WAB: (
        "Regulations on the Security Protection of Critical Information Infrastructure "
        "(State Council, 2021): dam and sluice control data",
    ),
}

_PUBLISH_EPOCH = date(2019, 1, 1)
_PUBLISH_DAYS = 6 * 365


@dataclass(frozen=True)
class SensorType:
    key: str
    abbr: str
    label: str
    owners: WeightedTable[str]
    weight: float
    placement: tuple[tuple[str, float], ...]
    datastreams: tuple[tuple[str, str, str], ...]
    update_cycle: str
    protocols: WeightedTable[str]
    sharing: tuple[float, float, float]
    open_to_public: float
    tags: tuple[str, ...]


SENSOR_TYPES: tuple[SensorType, ...] = (
    SensorType(
        "air_quality",
        "aq",
        "air quality station",
        WeightedTable([(deps.EEB, 1.0)]),
        0.24,
        (("road", 0.2), ("centre", 0.5), ("uniform", 0.3)),
        (
            ("pm25", "PM2.5 concentration", "ug/m3"),
            ("pm10", "PM10 concentration", "ug/m3"),
            ("no2", "NO2 concentration", "ug/m3"),
            ("so2", "SO2 concentration", "ug/m3"),
            ("o3", "O3 concentration", "ug/m3"),
            ("co", "CO concentration", "mg/m3"),
        ),
        "hour",
        WeightedTable([("mqtt", 0.8), ("http", 0.2)]),
        (0.92, 0.08, 0.0),
        0.8,
        ("air",),
    ),
    SensorType(
        "noise",
        "ns",
        "noise monitor",
        WeightedTable([(deps.EEB, 0.65), (deps.CMB, 0.35)]),
        0.16,
        (("road", 0.4), ("centre", 0.5), ("uniform", 0.1)),
        (
            ("laeq", "Equivalent continuous A-weighted sound level", "dB(A)"),
            ("lmax", "Maximum A-weighted sound level", "dB(A)"),
        ),
        "minute",
        WeightedTable([("mqtt", 0.7), ("http", 0.3)]),
        (0.85, 0.14, 0.01),
        0.5,
        ("noise",),
    ),
    SensorType(
        "water_level",
        "wl",
        "water level gauge",
        WeightedTable([(deps.WAB, 0.8), (deps.EEB, 0.2)]),
        0.14,
        (("river", 1.0),),
        (("water_level", "Water level above gauge datum", "m"), ("discharge", "Discharge", "m3/s")),
        "minute",
        WeightedTable([("mqtt", 0.85), ("http", 0.15)]),
        (0.75, 0.22, 0.03),
        0.4,
        ("river", "flood"),
    ),
    SensorType(
        "rain_gauge",
        "rg",
        "rain gauge",
        WeightedTable([(deps.WAB, 1.0)]),
        0.08,
        (("centre", 0.4), ("uniform", 0.6)),
        (("rainfall", "Precipitation", "mm"), ("rain_intensity", "Rainfall intensity", "mm/h")),
        "minute",
        WeightedTable([("mqtt", 0.9), ("http", 0.1)]),
        (0.95, 0.05, 0.0),
        0.6,
        ("rain", "flood"),
    ),
    SensorType(
        "traffic_counter",
        "tc",
        "traffic counter",
        WeightedTable([(deps.TB, 1.0)]),
        0.26,
        (("roadside", 1.0),),
        (
            ("vehicle_count", "Vehicle count", "vehicles/min"),
            ("mean_speed", "Mean vehicle speed", "km/h"),
            ("occupancy", "Lane occupancy", "%"),
        ),
        "minute",
        WeightedTable([("http", 0.6), ("mqtt", 0.4)]),
        (0.80, 0.19, 0.01),
        0.1,
        ("road", "traffic"),
    ),
    SensorType(
        "waterlogging",
        "wd",
        "waterlogging sensor",
        WeightedTable([(deps.CMB, 0.6), (deps.WAB, 0.4)]),
        0.07,
        (("road", 0.5), ("centre", 0.5)),
        (("water_depth", "Standing water depth", "cm"),),
        "minute",
        WeightedTable([("mqtt", 1.0)]),
        (0.80, 0.20, 0.0),
        0.1,
        ("underpass", "flood"),
    ),
    SensorType(
        "water_quality",
        "wq",
        "water quality station",
        WeightedTable([(deps.EEB, 1.0)]),
        0.05,
        (("river", 1.0),),
        (
            ("ph", "pH", "pH"),
            ("dissolved_oxygen", "Dissolved oxygen", "mg/L"),
            ("turbidity", "Turbidity", "NTU"),
            ("ammonia_n", "Ammonia nitrogen", "mg/L"),
        ),
        "hour",
        WeightedTable([("mqtt", 0.7), ("http", 0.3)]),
        (0.85, 0.13, 0.02),
        0.3,
        ("river", "water"),
    ),
)
_SENSOR_TYPE_TABLE = WeightedTable([(t, t.weight) for t in SENSOR_TYPES])
_SENSOR_PLACEMENT = {t.key: WeightedTable(list(t.placement)) for t in SENSOR_TYPES}

CAMERA_MIN_SPACING_M = 9.0
SENSOR_MIN_SPACING_M = 9.0
DUPLICATE_SHARE = 0.005
# Named like the registry's duplicate reasons. Each planted pair matches exactly one rule:
# same_code and same_stream_url pairs sit 4-15 m apart (the two departments surveyed the
# device differently), nearby_overlapping_view pairs 0.5-2.5 m apart with other codes and URLs.
DUPLICATE_KINDS = ("same_code", "same_stream_url", "nearby_overlapping_view")
NEARBY_M = 3.0


# ---------------------------------------------------------------------------------------------
# GB/T 28181 codes


def make_gb_code(region8: str, industry: str, type_code: str, network: str, serial: int) -> str:
    code = f"{region8}{industry}{type_code}{network}{serial:06d}"
    if len(code) != 20 or not code.isdigit():
        raise ValueError(f"not a GB/T 28181 code: {code!r}")
    return code


def parse_gb_code(code: str) -> dict[str, str]:
    """Split a 20-digit GB/T 28181 code into its parts (ValueError if it is not one)."""
    if len(code) != 20 or not code.isdigit():
        raise ValueError(f"not a GB/T 28181 code: {code!r}")
    return {
        "region": code[:8],
        "industry": code[8:10],
        "type": code[10:13],
        "network": code[13],
        "serial": code[14:],
    }


# ---------------------------------------------------------------------------------------------
# Positions


@dataclass
class Placement:
    lon: float
    lat: float
    component: str  # road | centre | uniform | river | roadside
    line: str | None = None
    bearing: float | None = None


class PointSource:
    """Draws positions from the mixture, inside the box, with a minimum spacing."""

    def __init__(self, min_spacing_m: float) -> None:
        self.roads = LineSampler(ROADS)
        self.river = LineSampler([RIVER])
        self.centres = WeightedTable([(d, d.weight) for d in DISTRICTS])
        self.min_spacing_m = min_spacing_m
        self._cells: dict[tuple[int, int], list[tuple[float, float]]] = {}

    def _cell(self, lon: float, lat: float) -> tuple[int, int]:
        x = (lon - BBOX[0]) * metres_per_deg_lon(lat)
        y = (lat - BBOX[1]) * METRES_PER_DEG_LAT
        return int(x // self.min_spacing_m), int(y // self.min_spacing_m)

    def _free(self, lon: float, lat: float) -> bool:
        cx, cy = self._cell(lon, lat)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for olon, olat in self._cells.get((cx + dx, cy + dy), ()):
                    if haversine_m(lon, lat, olon, olat) < self.min_spacing_m:
                        return False
        return True

    def neighbours(self, lon: float, lat: float, radius_m: float) -> list[tuple[float, float]]:
        """Registered points within ``radius_m`` (at most the minimum spacing) of (lon, lat)."""
        cx, cy = self._cell(lon, lat)
        found = []
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for olon, olat in self._cells.get((cx + dx, cy + dy), ()):
                    if haversine_m(lon, lat, olon, olat) <= radius_m:
                        found.append((olon, olat))
        return found

    def add(self, lon: float, lat: float) -> None:
        self._cells.setdefault(self._cell(lon, lat), []).append((lon, lat))

    def _raw(self, rng: Rand, component: str) -> Placement:
        if component in ("road", "roadside"):
            p = self.roads.sample(rng, 45.0 if component == "road" else 8.0)
            return Placement(p.lon, p.lat, component, p.line, p.bearing)
        if component == "river":
            p = self.river.sample(rng, 40.0)
            return Placement(p.lon, p.lat, component, p.line, p.bearing)
        if component == "centre":
            d = rng.weighted(self.centres)
            lon, lat = offset(
                d.seat[0], d.seat[1], rng.normal(0, d.sigma_m), rng.normal(0, d.sigma_m)
            )
            return Placement(lon, lat, component)
        return Placement(rng.uniform(BBOX[0], BBOX[2]), rng.uniform(BBOX[1], BBOX[3]), "uniform")

    def draw(self, rng: Rand, component: str) -> Placement:
        while True:
            p = self._raw(rng, component)
            p.lon, p.lat = round(p.lon, 6), round(p.lat, 6)
            if in_bbox(p.lon, p.lat) and self._free(p.lon, p.lat):
                self.add(p.lon, p.lat)
                return p


def _nearest_places(lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    plon = np.array([p[1] for p in PLACES])
    plat = np.array([p[2] for p in PLACES])
    kx = np.cos(np.radians(lats))[:, None]
    d2 = ((lons[:, None] - plon[None, :]) * kx) ** 2 + (lats[:, None] - plat[None, :]) ** 2
    return np.asarray(np.argmin(d2, axis=1))


def _river_distances_m(lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    best = np.full(lons.shape, np.inf)
    kx = 111_320.0 * np.cos(np.radians(lats))
    for (x1, y1), (x2, y2) in zip(RIVER.points, RIVER.points[1:], strict=False):
        ax, ay = (x1 - lons) * kx, (y1 - lats) * METRES_PER_DEG_LAT
        bx, by = (x2 - lons) * kx, (y2 - lats) * METRES_PER_DEG_LAT
        dx, dy = bx - ax, by - ay
        seg2 = dx * dx + dy * dy
        t = np.clip(-(ax * dx + ay * dy) / np.where(seg2 == 0, 1.0, seg2), 0.0, 1.0)
        best = np.minimum(best, np.hypot(ax + t * dx, ay + t * dy))
    return best


# ---------------------------------------------------------------------------------------------
# Camera records (phase 1 and 2)


@dataclass
class _Camera:
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


@dataclass
class GeneratedFeeds:
    """The features (cameras first, then sensors) and the planted duplicates."""

    features: list[Feature]
    duplicates: list[dict[str, Any]] = field(default_factory=list)


class _Counters:
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


def _wrap_heading(h: float) -> float:
    h = round(h % 360.0, 1)
    return 0.0 if h >= 360.0 else h


def _camera_fov(rng: Rand, type_code: str, place: Placement) -> dict[str, Any] | None:
    along = place.bearing is not None and place.component == "road"
    if type_code == "121":  # checkpoint: looks along the road, narrow and short
        base = (place.bearing or 0.0) + (180.0 if rng.chance(0.5) else 0.0)
        heading = base + rng.normal(0, 4) if along else rng.uniform(0, 360)
        return {
            "heading": _wrap_heading(heading),
            "angle": rng.randint(20, 45),
            "range_m": rng.randint(20, 60),
        }
    if rng.chance(0.08):
        return None
    if rng.chance(0.16):  # dome / PTZ
        return {
            "heading": _wrap_heading(rng.uniform(0, 360)),
            "angle": 360,
            "range_m": rng.randint(80, 300),
        }
    if along and rng.chance(0.7):
        base = (place.bearing or 0.0) + (180.0 if rng.chance(0.5) else 0.0)
        heading = base + rng.normal(0, 20)
    else:
        heading = rng.uniform(0, 360)
    return {
        "heading": _wrap_heading(heading),
        "angle": rng.randint(30, 110),
        "range_m": rng.randint(15, 160),
    }


def _pick3(rng: Rand, probs: tuple[float, float, float]) -> str:
    u = rng.random()
    if u < probs[0]:
        return SHARING_CLASSES[0]
    if u < probs[0] + probs[1]:
        return SHARING_CLASSES[1]
    return SHARING_CLASSES[2]


def _generate_cameras(
    count: int, seed: int, counters: _Counters, progress: ProgressCallback | None
) -> tuple[list[_Camera], PointSource]:
    rng = Rand(f"feedgrid-demo:{seed}:cameras")
    source = PointSource(CAMERA_MIN_SPACING_M)
    cams: list[_Camera] = []
    components = ("road", "centre", "uniform")
    for i in range(count):
        kind = rng.weighted(CAMERA_OWNER_KINDS)
        owner = deps.CAMERA_OWNERS[kind]
        industry = rng.weighted(_INDUSTRY[kind])
        if industry == "05" and rng.chance(0.6):
            type_code = "121"
        else:
            type_code = "132" if rng.chance(0.7) else "131"
        network = rng.weighted(_NETWORK[kind])
        mix = _PLACEMENT[industry]
        u = rng.random()
        component = components[0 if u < mix[0] else 1 if u < mix[0] + mix[1] else 2]
        place = source.draw(rng, component)
        region8 = district_of(place.lon, place.lat).code + "00"
        code = counters.gb_code(region8, industry, type_code, network)
        fov = _camera_fov(rng, type_code, place)
        sharing = _pick3(rng, _CAMERA_SHARING[industry])
        protocol = rng.weighted(_CAMERA_PROTOCOLS[kind])
        cams.append(
            _Camera(
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


def _plant_duplicates(
    cams: list[_Camera], source: PointSource, seed: int, counters: _Counters
) -> list[tuple[str, int, int]]:
    """Turn ~0.5 % of transport / urban-management cameras into re-registrations of
    public-security road cameras. Returns (kind, original index, duplicate index) triples.

    Cameras are at least CAMERA_MIN_SPACING_M apart, and every duplicate is placed so that
    it is within NEARBY_M of nothing but (for nearby_overlapping_view) its original.
    """
    rng = Rand(f"feedgrid-demo:{seed}:duplicates")
    slots = [i for i, c in enumerate(cams) if c.owner_kind in ("transport", "urban_management")]
    originals = [
        i
        for i, c in enumerate(cams)
        if c.owner_kind == "public_security" and c.industry == "00" and c.fov is not None
    ]
    if not slots or not originals:
        return []
    n = min(max(1, round(DUPLICATE_SHARE * len(slots))), len(slots), len(originals))
    chosen_slots = rng.sample(slots, n)
    candidates = iter(rng.sample(originals, len(originals)))
    planted = []
    for k, si in enumerate(chosen_slots):
        kind = DUPLICATE_KINDS[k % len(DUPLICATE_KINDS)]
        nearby = kind == "nearby_overlapping_view"
        placed = None
        for oi in candidates:
            orig = cams[oi]
            for _ in range(40):
                dist = rng.uniform(0.5, 2.5) if nearby else rng.uniform(4.0, 15.0)
                lon, lat = destination(orig.place.lon, orig.place.lat, rng.uniform(0, 360), dist)
                lon, lat = round(lon, 6), round(lat, 6)
                d = haversine_m(lon, lat, orig.place.lon, orig.place.lat)
                if not in_bbox(lon, lat) or (d > NEARBY_M - 0.3 if nearby else d < NEARBY_M + 0.5):
                    continue
                close = source.neighbours(lon, lat, NEARBY_M + 0.5)
                if close == ([(orig.place.lon, orig.place.lat)] if nearby else []):
                    placed = (oi, lon, lat)
                    break
            if placed:
                break
        if placed is None:
            break  # no original left: plant fewer
        oi, lon, lat = placed
        source.add(lon, lat)
        dup, orig = cams[si], cams[oi]
        assert orig.fov is not None
        dup.place = Placement(lon, lat, orig.place.component, orig.place.line, orig.place.bearing)
        dup.fov = {
            "heading": _wrap_heading(orig.fov["heading"] + rng.uniform(-12.0, 12.0)),
            "angle": orig.fov["angle"],
            "range_m": max(10, min(300, round(orig.fov["range_m"] * rng.uniform(0.9, 1.1)))),
        }
        if kind == "same_code":
            dup.code = orig.code
        else:
            region8 = district_of(lon, lat).code + "00"
            dup.code = counters.gb_code(region8, dup.industry, dup.type_code, dup.network)
        if kind == "same_stream_url":
            dup.stream_from = oi
            dup.protocol = orig.protocol
        planted.append((kind, oi, si))
    return planted


# ---------------------------------------------------------------------------------------------
# Phase 3: features


def _ip(owner: str, n: int) -> str:
    base = _IP_BASE[owner]
    return f"10.{base + n // (255 * 254)}.{(n // 254) % 255}.{n % 254 + 1}"


def _camera_stream(owner: str, protocol: str, host: int, code: str) -> dict[str, str]:
    base = _IP_BASE[owner]
    if protocol == "rtsp":
        ip, channel = _ip(owner, host // 8), host % 8 + 1
        if (host // 8) % 3 == 0:
            url = f"rtsp://{ip}:554/cam/realmonitor?channel={channel}&subtype=0"
        else:
            url = f"rtsp://{ip}:554/Streaming/Channels/{channel}01"
    elif protocol == "gb28181":
        url = f"gb28181://{_SIP_PLATFORM[owner]}@10.{base}.255.250:5060/{code}"
    elif protocol == "hls":
        url = f"http://10.{base}.255.{20 + host % 8}:8080/hls/{code}/index.m3u8"
    elif protocol == "rtmp":
        url = f"rtmp://10.{base}.255.{30 + host % 4}:1935/live/{code}"
    elif protocol == "webrtc":
        url = f"http://10.{base}.255.{40 + host % 4}:8889/{owner}/{code}/whep"
    else:  # pragma: no cover - tables only hold the protocols above
        raise ValueError(protocol)
    return {"protocol": protocol, "url": url, "media_path": f"{owner}/{code}"}


def _sharing_block(
    rng: Rand, owner: str, cls: str, is_camera: bool, all_codes: set[str]
) -> dict[str, Any]:
    if cls == "unconditional":
        return {"class": cls, "conditions": None, "legal_basis": None}
    if cls == "not_shared":
        return {"class": cls, "conditions": None, "legal_basis": rng.choice(_LEGAL_BASIS[owner])}
    affinity = [c for c in _AFFINITY[owner] if c in all_codes and c != owner]
    departments = sorted(rng.sample(affinity, rng.randint(2, 4)))
    owner_purposes = _OWNER_PURPOSES[owner]
    picked = set(rng.sample(owner_purposes, rng.randint(1, 2)))
    purposes = [p for p in PURPOSES if p in picked]
    if is_camera:
        chosen = {"live"}
        if rng.chance(0.6):
            chosen.add("snapshot")
        if rng.chance(0.5):
            chosen.add("playback")
        if rng.chance(0.08):
            chosen.add("ptz")
        if rng.chance(0.05):
            chosen.add("download")
        actions = [a for a in CAMERA_ACTIONS if a in chosen]
        u = rng.random()
        max_minutes: int | None = (
            60 if u < 0.35 else 240 if u < 0.70 else 1440 if u < 0.90 else None
        )
    else:
        actions = ["read", "download"] if rng.chance(0.2) else ["read"]
        max_minutes = 1440 if rng.chance(0.5) else None
    return {
        "class": cls,
        "conditions": {
            "departments": departments,
            "purposes": purposes,
            "actions": actions,
            "max_duration_minutes": max_minutes,
            "area": None,
        },
        "legal_basis": None,
    }


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _publish_date(rng: Rand) -> str:
    return (_PUBLISH_EPOCH + timedelta(days=rng.randint(0, _PUBLISH_DAYS))).isoformat()


def _camera_tags(rng: Rand, cam: _Camera, river_m: float) -> list[str]:
    ind = cam.industry
    tags: list[str] = []
    on_road = cam.place.component == "road"
    if ind == "05":
        tags = ["road", "checkpoint"]
        if rng.chance(0.5):
            tags.append("crossroad")
    elif ind == "02":
        tags = ["internal"]
    elif ind == "06":
        tags = ["internal", "depot"]
    elif ind == "01":
        tags = ["community"]
        u = rng.random()
        if u < 0.10:
            tags.append("school")
        elif u < 0.15:
            tags.append("hospital")
    elif ind == "03":
        tags = [rng.choice(("station", "square", "park", "hospital"))]
    elif ind == "07":
        tags = [rng.choice(("bus station", "parking"))]
    elif ind == "08":
        tags = [rng.choice(("street", "market", "square", "construction site", "park"))]
    elif ind == "09":
        tags = [rng.choice(("industrial", "construction site", "park", "landfill"))]
    elif ind == "00" and not on_road:
        tags = ["street"]
    elif ind == "04" and not on_road:
        tags = ["road"]
    if on_road and "road" not in tags:
        tags.insert(0, "road")
        if river_m < 250 and rng.chance(0.5):
            tags.append("bridge")
        elif "crossroad" not in tags and rng.chance(0.35):
            tags.append("crossroad")
        elif rng.chance(0.03):
            tags.append("tunnel")
    if river_m < 300 and "river" not in tags:
        tags.append("river")
    return tags


_SITE_LABEL = {
    "checkpoint": "Checkpoint",
    "bridge": "Bridge",
    "crossroad": "Crossroad",
    "tunnel": "Tunnel",
    "school": "School Gate",
    "hospital": "Hospital",
    "internal": "Compound",
    "depot": "Depot",
    "community": "Community",
    "station": "Station",
    "bus station": "Bus Station",
    "parking": "Car Park",
    "square": "Square",
    "park": "Park",
    "market": "Market",
    "street": "Street",
    "construction site": "Construction Site",
    "industrial": "Industrial Site",
    "landfill": "Landfill",
    "road": "Road",
    "river": "Riverside",
}
_SITE_PRIORITY = tuple(_SITE_LABEL)


def _site_label(tags: list[str]) -> str:
    for key in _SITE_PRIORITY:
        if key in tags:
            return _SITE_LABEL[key]
    return "Street"


def _ground_m(river_m: float, jitter: float) -> float:
    return min(2150.0, 1512.0 + 0.045 * river_m + jitter)


def _coverage(lon: float, lat: float, fov: dict[str, Any]) -> dict[str, Any] | None:
    """The field of view as a small counter-clockwise GeoJSON Polygon (<= 32 positions)."""
    heading, angle, reach = float(fov["heading"]), float(fov["angle"]), float(fov["range_m"])
    ring: list[tuple[float, float]] = []
    if angle >= 360:
        steps = 24
        for k in range(steps):
            ring.append(destination(lon, lat, -k * 360.0 / steps, reach))
    else:
        steps = max(3, min(29, math.ceil(angle / 8.0) + 1))
        ring.append((lon, lat))
        start = heading + angle / 2.0
        for k in range(steps):  # decreasing bearing = counter-clockwise on the map
            ring.append(destination(lon, lat, start - k * angle / (steps - 1), reach))
    rounded: list[list[float]] = []
    for x, y in ring:
        pt = [round(x, 6), round(y, 6)]
        if not rounded or rounded[-1] != pt:
            rounded.append(pt)
    if rounded[-1] == rounded[0]:
        rounded.pop()
    if len(rounded) < 3:
        return None
    area2 = 0.0
    for (x1, y1), (x2, y2) in zip(rounded, rounded[1:] + rounded[:1], strict=True):
        area2 += x1 * y2 - x2 * y1
    if area2 <= 0:
        return None
    rounded.append(list(rounded[0]))
    return {"type": "Polygon", "coordinates": [rounded]}


def _feature(lon: float, lat: float, properties: dict[str, Any]) -> Feature:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": properties,
    }


def _camera_features(
    cams: list[_Camera], seed: int, counters: _Counters, all_codes: set[str]
) -> list[Feature]:
    rng = Rand(f"feedgrid-demo:{seed}:camera-attributes")
    if not cams:
        return []
    lons = np.array([c.place.lon for c in cams])
    lats = np.array([c.place.lat for c in cams])
    place_idx = _nearest_places(lons, lats).tolist()
    river_m = _river_distances_m(lons, lats).tolist()
    streams = [_camera_stream(c.owner, c.protocol, c.host, c.code) for c in cams]
    for i, c in enumerate(cams):
        if c.stream_from is not None:
            src = streams[c.stream_from]
            streams[i] = {
                "protocol": src["protocol"],
                "url": src["url"],
                "media_path": f"{c.owner}/{c.code}",
            }
    owner_names = {d["code"]: d["name"] for d in deps.departments()}
    recent: dict[str, list[str]] = {}
    out: list[Feature] = []
    for i, c in enumerate(cams):
        tags = _camera_tags(rng, c, river_m[i])
        place = PLACES[place_idx[i]][0]
        site = _site_label(tags)
        name = f"{place} {site} camera {counters.name(place, site)}"
        altitude = (
            None
            if rng.chance(0.1)
            else round(_ground_m(river_m[i], rng.normal(0, 6)) + rng.uniform(3, 15), 1)
        )
        coverage = None
        if (
            c.fov is not None
            and c.fov["angle"] >= 10
            and c.fov["range_m"] >= 20
            and rng.chance(0.01)
        ):
            coverage = _coverage(c.place.lon, c.place.lat, c.fov)
        resource_code = counters.resource_code(c.owner, "V")
        related: list[str] = []
        pool = recent.setdefault(c.owner, [])
        if pool and rng.chance(0.15):
            related = sorted(rng.sample(pool, rng.randint(1, 2)))
        pool.append(resource_code)
        if len(pool) > 40:
            del pool[0]
        sharing = _sharing_block(rng, c.owner, c.sharing, True, all_codes)
        district = district_of(c.place.lon, c.place.lat).name
        fmt = "video/H.265" if rng.chance(0.55) else "video/H.264"
        if c.owner_kind == "public_security":
            u = rng.random()
            classification = "department" if u < 0.5 else "basic" if u < 0.8 else "theme"
        else:
            u = rng.random()
            classification = "theme" if u < 0.5 else "department" if u < 0.8 else "basic"
        public_p = {"environment": 0.3, "transport": 0.15}.get(c.owner_kind, 0.02)
        open_to_public = c.sharing == "unconditional" and rng.chance(public_p)
        catalog = {
            "resource_name": f"{name} live video",
            "resource_code": resource_code,
            "abstract": (
                f"Live video of {place} ({district} District) from a "
                f"{'checkpoint' if c.type_code == '121' else 'camera'} of the "
                f"{owner_names[c.owner]}; {fmt.split('/')[1]}, real time."
            ),
            "format": fmt,
            "classification": classification,
            "update_cycle": "realtime",
            "open_to_public": open_to_public,
            "publish_date": _publish_date(rng),
            "related_codes": related,
        }
        props = {
            "kind": "camera",
            "code": c.code,
            "owner": c.owner,
            "name": name,
            "altitude": altitude,
            "fov": c.fov,
            "coverage": coverage,
            "stream": streams[i],
            "datastreams": [],
            "catalog": catalog,
            "sharing": sharing,
            "tags": tags,
        }
        out.append(_feature(c.place.lon, c.place.lat, props))
    return out


def _generate_sensors(
    count: int,
    seed: int,
    counters: _Counters,
    all_codes: set[str],
    progress: ProgressCallback | None,
) -> list[Feature]:
    rng = Rand(f"feedgrid-demo:{seed}:sensors")
    source = PointSource(SENSOR_MIN_SPACING_M)
    records: list[tuple[SensorType, str, Placement]] = []
    for _ in range(count):
        st = rng.weighted(_SENSOR_TYPE_TABLE)
        owner = rng.weighted(st.owners)
        component = rng.weighted(_SENSOR_PLACEMENT[st.key])
        records.append((st, owner, source.draw(rng, component)))
    if not records:
        return []
    lons = np.array([r[2].lon for r in records])
    lats = np.array([r[2].lat for r in records])
    place_idx = _nearest_places(lons, lats).tolist()
    river_m = _river_distances_m(lons, lats).tolist()
    owner_names = {d["code"]: d["name"] for d in deps.departments()}
    recent: dict[str, list[str]] = {}
    out: list[Feature] = []
    for i, (st, owner, pl) in enumerate(records):
        key = (owner, st.abbr)
        serial = counters.sensor_serial.get(key, 0) + 1
        counters.sensor_serial[key] = serial
        code = f"{owner}-{st.abbr}-{serial:06d}"
        place = PLACES[place_idx[i]][0]
        name = f"{place} {st.label} {counters.name(place, st.label)}"
        protocol = rng.weighted(st.protocols)
        if protocol == "mqtt":
            url = f"mqtt://10.20.0.{_MQTT_BROKER[owner]}:1883/{st.abbr}/{serial:06d}"
        else:
            url = (
                f"http://10.20.1.{_MQTT_BROKER[owner]}:8080/api/v1/{st.abbr}/"
                f"{serial:06d}/observations"
            )
        mount = (
            0.0
            if st.key in ("water_level", "water_quality", "waterlogging")
            else (rng.uniform(2, 20) if st.key == "air_quality" else rng.uniform(2, 8))
        )
        ground = _ground_m(
            river_m[i], 0.0 if st.key in ("water_level", "water_quality") else rng.normal(0, 6)
        )
        altitude = None if rng.chance(0.05) else round(ground + mount, 1)
        cls = _pick3(rng, st.sharing)
        sharing = _sharing_block(rng, owner, cls, False, all_codes)
        resource_code = counters.resource_code(owner, "S")
        related: list[str] = []
        pool = recent.setdefault(owner, [])
        if pool and rng.chance(0.2):
            related = sorted(rng.sample(pool, 1))
        pool.append(resource_code)
        if len(pool) > 40:
            del pool[0]
        tags = list(st.tags)
        if st.key != "traffic_counter" and pl.component in ("road", "roadside"):
            tags.append("road")
        if river_m[i] < 300 and "river" not in tags:
            tags.append("river")
        district = district_of(pl.lon, pl.lat).name
        u = rng.random()
        catalog = {
            "resource_name": f"{name} observations",
            "resource_code": resource_code,
            "abstract": (
                f"Observations of {_article(st.label)} {st.label} at {place} "
                f"({district} District), run by the {owner_names[owner]}: "
                + ", ".join(ds[0] for ds in st.datastreams)
                + "."
            ),
            "format": "application/json",
            "classification": "theme" if u < 0.6 else "basic" if u < 0.9 else "department",
            "update_cycle": st.update_cycle,
            "open_to_public": cls == "unconditional" and rng.chance(st.open_to_public),
            "publish_date": _publish_date(rng),
            "related_codes": related,
        }
        props = {
            "kind": "sensor",
            "code": code,
            "owner": owner,
            "name": name,
            "altitude": altitude,
            "fov": None,
            "coverage": None,
            "stream": {"protocol": protocol, "url": url, "media_path": f"{owner}/{code}"},
            "datastreams": [
                {"name": n, "observed_property": prop, "unit": unit}
                for n, prop, unit in st.datastreams
            ],
            "catalog": catalog,
            "sharing": sharing,
            "tags": tags,
        }
        out.append(_feature(pl.lon, pl.lat, props))
        if progress and (i + 1) % 500 == 0:
            progress("sensors", 500)
    if progress and count % 500:
        progress("sensors", count % 500)
    return out


def _duplicate_entry(kind: str, oi: int, di: int, features: list[Feature]) -> dict[str, Any]:
    def side(i: int) -> dict[str, Any]:
        p = features[i]["properties"]
        return {
            "line": i,
            "owner": p["owner"],
            "code": p["code"],
            "resource_code": p["catalog"]["resource_code"],
            "stream_url": p["stream"]["url"],
            "coordinates": features[i]["geometry"]["coordinates"],
        }

    a, b = features[oi], features[di]
    (lon1, lat1), (lon2, lat2) = a["geometry"]["coordinates"], b["geometry"]["coordinates"]
    h1 = a["properties"]["fov"]["heading"]
    h2 = b["properties"]["fov"]["heading"]
    delta = abs((h1 - h2 + 180.0) % 360.0 - 180.0)
    return {
        "kind": kind,
        "original": side(oi),
        "duplicate": side(di),
        "distance_m": round(haversine_m(lon1, lat1, lon2, lat2), 2),
        "heading_delta_deg": round(delta, 1),
    }


def generate_feeds(
    cameras: int = 57_000,
    sensors: int = 3_000,
    seed: int = 28181,
    progress: ProgressCallback | None = None,
) -> GeneratedFeeds:
    """All features of the demo city (cameras first, then sensors) and the planted duplicates.

    ``progress(stage, advance)`` is called now and then with stage "cameras" or "sensors".
    """
    if cameras < 0 or sensors < 0:
        raise ValueError("counts must not be negative")
    all_codes = set(deps.department_codes())
    counters = _Counters()
    cams, source = _generate_cameras(cameras, seed, counters, progress)
    planted = _plant_duplicates(cams, source, seed, counters)
    features = _camera_features(cams, seed, counters, all_codes)
    features.extend(_generate_sensors(sensors, seed, counters, all_codes, progress))
    duplicates = [_duplicate_entry(kind, oi, di, features) for kind, oi, di in planted]
    duplicates.sort(key=lambda d: d["duplicate"]["line"])
    return GeneratedFeeds(features, duplicates)
