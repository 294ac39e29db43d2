"""Geography of the synthetic demo city, modelled on Lanzhou.

Everything here is static data plus pure functions: the bounding box, the centre, the Yellow
River, a handful of synthetic roads along the river valley, district seats (whose GB/T 2260
codes become the region part of GB/T 28181 codes) and named places used to name the feeds.
Coordinates are approximate and only meant to look plausible on a map; they are not survey data.

Random draws go through :class:`Rand`, which only ever calls ``random.Random.random()``: that is
the one method whose sequence Python promises to keep for a given seed, so the demo city stays
byte-identical across Python versions.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# lon_min, lat_min, lon_max, lat_max
BBOX: tuple[float, float, float, float] = (103.5, 35.9, 104.1, 36.2)
CENTRE: tuple[float, float] = (103.83, 36.06)

METRES_PER_DEG_LAT = 110_950.0  # at ~36 N
METRES_PER_DEG_LON_EQUATOR = 111_320.0


def metres_per_deg_lon(lat: float) -> float:
    return METRES_PER_DEG_LON_EQUATOR * math.cos(math.radians(lat))


def offset(lon: float, lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    """The point ``east_m`` metres east and ``north_m`` metres north of (lon, lat)."""
    return lon + east_m / metres_per_deg_lon(lat), lat + north_m / METRES_PER_DEG_LAT


def destination(lon: float, lat: float, bearing_deg: float, metres: float) -> tuple[float, float]:
    """The point at ``metres`` along ``bearing_deg`` (clockwise from north)."""
    b = math.radians(bearing_deg)
    return offset(lon, lat, metres * math.sin(b), metres * math.cos(b))


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres (mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(h)))


def in_bbox(lon: float, lat: float) -> bool:
    return BBOX[0] <= lon <= BBOX[2] and BBOX[1] <= lat <= BBOX[3]


# --------------------------------------------------------------------------------------------
# Random draws


class Rand:
    """Seeded draws built only on ``random.Random.random()`` (stable across Python versions)."""

    def __init__(self, seed: int | str) -> None:
        self._r = random.Random(seed)
        self.random = self._r.random

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def randint(self, a: int, b: int) -> int:
        """An integer in [a, b], both ends included."""
        return a + min(int(self.random() * (b - a + 1)), b - a)

    def chance(self, p: float) -> bool:
        return self.random() < p

    def normal(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        # Box-Muller; 1 - random() is in (0, 1] so the log is finite.
        u1 = 1.0 - self.random()
        u2 = self.random()
        return mu + sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[min(int(self.random() * len(seq)), len(seq) - 1)]

    def weighted(self, table: WeightedTable[T]) -> T:
        return table.pick(self.random())

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        """``k`` distinct elements in draw order (partial Fisher-Yates)."""
        pool = list(seq)
        k = min(k, len(pool))
        for i in range(k):
            j = i + min(int(self.random() * (len(pool) - i)), len(pool) - i - 1)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


class WeightedTable(Generic[T]):
    """Values with weights; ``pick(u)`` maps a uniform u in [0, 1) to a value."""

    def __init__(self, items: Sequence[tuple[T, float]]) -> None:
        if not items:
            raise ValueError("empty weighted table")
        total = float(sum(w for _, w in items))
        if total <= 0:
            raise ValueError("weights must sum to a positive number")
        self.values = [v for v, _ in items]
        acc = 0.0
        self.cumulative: list[float] = []
        for _, w in items:
            acc += w / total
            self.cumulative.append(acc)

    def pick(self, u: float) -> T:
        return self.values[min(bisect_right(self.cumulative, u), len(self.values) - 1)]


# --------------------------------------------------------------------------------------------
# Lines: the river and the roads


@dataclass(frozen=True)
class Polyline:
    name: str
    points: tuple[tuple[float, float], ...]
    weight: float = 1.0  # relative density of feeds along it, per metre

    def segments_m(self) -> list[float]:
        out = []
        for (x1, y1), (x2, y2) in zip(self.points, self.points[1:], strict=False):
            out.append(haversine_m(x1, y1, x2, y2))
        return out

    def length_m(self) -> float:
        return sum(self.segments_m())


def _shifted(points: Sequence[tuple[float, float]], dlat: float) -> tuple[tuple[float, float], ...]:
    return tuple((x, round(y + dlat, 5)) for x, y in points)


# The Yellow River through the valley, west to east (it leaves the box to the north-east).
_RIVER_POINTS: tuple[tuple[float, float], ...] = (
    (103.51, 36.118),
    (103.57, 36.112),
    (103.62, 36.104),
    (103.67, 36.096),
    (103.71, 36.088),
    (103.76, 36.076),
    (103.80, 36.068),
    (103.84, 36.062),
    (103.88, 36.060),
    (103.93, 36.066),
    (103.98, 36.074),
    (104.04, 36.086),
    (104.09, 36.098),
)
RIVER = Polyline("Yellow River", _RIVER_POINTS)

ROADS: tuple[Polyline, ...] = (
    Polyline("Nanbinhe Road", _shifted(_RIVER_POINTS[1:-1], -0.0045), 1.3),
    Polyline("Beibinhe Road", _shifted(_RIVER_POINTS[1:-2], +0.0045), 1.0),
    Polyline(
        "Xijin-Minzhu Road",
        (
            (103.58, 36.098),
            (103.64, 36.090),
            (103.70, 36.076),
            (103.75, 36.062),
            (103.79, 36.056),
            (103.83, 36.053),
            (103.87, 36.050),
            (103.92, 36.050),
            (103.98, 36.056),
            (104.05, 36.066),
        ),
        1.5,
    ),
    Polyline(
        "Anning Road",
        ((103.63, 36.118), (103.68, 36.110), (103.72, 36.103), (103.77, 36.092), (103.81, 36.082)),
        0.9,
    ),
    Polyline(
        "Tianshui Road - Yuzhong Expressway",
        (
            (103.85, 36.062),
            (103.86, 36.040),
            (103.88, 36.015),
            (103.92, 35.985),
            (103.98, 35.955),
            (104.04, 35.930),
            (104.09, 35.912),
        ),
        0.8,
    ),
    Polyline(
        "Gaolan Road",
        ((103.86, 36.066), (103.87, 36.090), (103.89, 36.120), (103.92, 36.150), (103.95, 36.190)),
        0.5,
    ),
    Polyline(
        "Qilihe - Xiguoyuan Road",
        ((103.78, 36.060), (103.76, 36.035), (103.73, 36.000), (103.70, 35.965), (103.67, 35.925)),
        0.6,
    ),
    Polyline(
        "Nanshan Road",
        ((103.70, 36.040), (103.75, 36.030), (103.80, 36.026), (103.86, 36.024), (103.93, 36.032)),
        0.6,
    ),
)


@dataclass(frozen=True)
class LinePoint:
    lon: float
    lat: float
    bearing: float  # direction of the line at that point, degrees clockwise from north
    line: str


class LineSampler:
    """Uniform points along a set of polylines (weighted by length x weight)."""

    def __init__(self, lines: Sequence[Polyline]) -> None:
        self._segments: list[tuple[str, float, float, float, float]] = []
        items: list[tuple[int, float]] = []
        for line in lines:
            for ((x1, y1), (x2, y2)), length in zip(
                zip(line.points, line.points[1:], strict=False), line.segments_m(), strict=True
            ):
                items.append((len(self._segments), length * line.weight))
                self._segments.append((line.name, x1, y1, x2, y2))
        self._table = WeightedTable(items)

    def sample(self, rng: Rand, jitter_m: float) -> LinePoint:
        name, x1, y1, x2, y2 = self._segments[rng.weighted(self._table)]
        t = rng.random()
        lon, lat = x1 + t * (x2 - x1), y1 + t * (y2 - y1)
        east = (x2 - x1) * metres_per_deg_lon(lat)
        north = (y2 - y1) * METRES_PER_DEG_LAT
        bearing = math.degrees(math.atan2(east, north)) % 360.0
        if jitter_m > 0:
            side = rng.normal(0.0, jitter_m)
            lon, lat = destination(lon, lat, bearing + 90.0, side)
        return LinePoint(lon, lat, bearing, name)


def distance_to_line_m(lon: float, lat: float, line: Polyline) -> float:
    """Approximate distance in metres from a point to a polyline (local flat projection)."""
    kx, ky = metres_per_deg_lon(lat), METRES_PER_DEG_LAT
    best = math.inf
    for (x1, y1), (x2, y2) in zip(line.points, line.points[1:], strict=False):
        ax, ay = (x1 - lon) * kx, (y1 - lat) * ky
        bx, by = (x2 - lon) * kx, (y2 - lat) * ky
        dx, dy = bx - ax, by - ay
        seg2 = dx * dx + dy * dy
        t = 0.0 if seg2 == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / seg2))
        px, py = ax + t * dx, ay + t * dy
        best = min(best, math.hypot(px, py))
    return best


# --------------------------------------------------------------------------------------------
# Districts (GB/T 2260) and named places


@dataclass(frozen=True)
class District:
    code: str  # 6-digit GB/T 2260 code
    name: str
    seat: tuple[float, float]
    weight: float  # share of the "gaussian around a centre" feeds
    sigma_m: float


DISTRICTS: tuple[District, ...] = (
    District("620102", "Chengguan", (103.835, 36.058), 0.40, 2600.0),
    District("620103", "Qilihe", (103.775, 36.062), 0.20, 2000.0),
    District("620104", "Xigu", (103.630, 36.100), 0.12, 1800.0),
    District("620105", "Anning", (103.720, 36.100), 0.14, 1800.0),
    District("620111", "Honggu", (103.535, 36.175), 0.02, 1200.0),
    District("620121", "Yongdeng", (103.640, 36.185), 0.02, 1200.0),
    District("620122", "Gaolan", (103.950, 36.175), 0.04, 1500.0),
    District("620123", "Yuzhong", (104.040, 35.930), 0.06, 1800.0),
)


def district_of(lon: float, lat: float) -> District:
    """The district whose seat is nearest (a synthetic Voronoi partition of the box)."""
    kx = metres_per_deg_lon(lat)
    best = DISTRICTS[0]
    best_d = math.inf
    for d in DISTRICTS:
        dx = (d.seat[0] - lon) * kx
        dy = (d.seat[1] - lat) * METRES_PER_DEG_LAT
        dist = dx * dx + dy * dy
        if dist < best_d:
            best, best_d = d, dist
    return best


# Named places (approximate); feeds are named after the nearest one.
PLACES: tuple[tuple[str, float, float], ...] = (
    ("Dongfanghong Square", 103.842, 36.056),
    ("Xiguan", 103.818, 36.062),
    ("Zhongshan Bridge", 103.825, 36.066),
    ("Baita Mountain", 103.826, 36.072),
    ("Zhangye Road", 103.829, 36.061),
    ("Jiuquan Road", 103.833, 36.058),
    ("Qingyang Road", 103.836, 36.063),
    ("Pingliang Road", 103.845, 36.050),
    ("Lanzhou Railway Station", 103.852, 36.038),
    ("Wuquan Mountain", 103.830, 36.043),
    ("Yantan", 103.893, 36.057),
    ("Donggang", 103.880, 36.046),
    ("Tuomuchang", 103.867, 36.052),
    ("Lanzhou University", 103.858, 36.050),
    ("Gaoxinqu", 103.884, 36.066),
    ("Xiaoxihu", 103.795, 36.067),
    ("Lanzhou West Station", 103.771, 36.065),
    ("Qilihe Bridge", 103.781, 36.072),
    ("Jianlan Road", 103.790, 36.057),
    ("Dunhuang Road", 103.768, 36.060),
    ("Xiguoyuan", 103.705, 35.970),
    ("Bali Town", 103.745, 36.030),
    ("Anning Bridge", 103.740, 36.086),
    ("Peili", 103.705, 36.098),
    ("Liujiabao", 103.735, 36.098),
    ("Shilidian", 103.764, 36.094),
    ("Anning West Road", 103.680, 36.105),
    ("Xigu Chemical Park", 103.625, 36.110),
    ("Chenguanying", 103.660, 36.094),
    ("Xiliugou", 103.590, 36.112),
    ("Hekou", 103.530, 36.130),
    ("Qingbaishi", 103.915, 36.064),
    ("Sangyuanxia", 103.980, 36.078),
    ("Dongping", 104.045, 36.060),
    ("Heping Town", 103.985, 35.960),
    ("Yuzhong County Seat", 104.090, 35.915),
    ("Zhongbao", 103.950, 36.175),
    ("Beishan", 103.880, 36.120),
    ("Nanshan", 103.800, 36.022),
    ("Wuli Pu", 103.890, 36.015),
    ("Honggu Gate", 103.540, 36.180),
    ("Shuchuan", 103.650, 36.185),
)
