"""Where feeds stand: positions drawn from the road / district centre / uniform mixture inside
the city box, with a minimum spacing, and their nearest place and distance to the river."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    haversine_m,
    in_bbox,
    metres_per_deg_lon,
    offset,
)


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


def nearest_places(lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    plon = np.array([p[1] for p in PLACES])
    plat = np.array([p[2] for p in PLACES])
    kx = np.cos(np.radians(lats))[:, None]
    d2 = ((lons[:, None] - plon[None, :]) * kx) ** 2 + (lats[:, None] - plat[None, :]) ** 2
    return np.asarray(np.argmin(d2, axis=1))


def river_distances_m(lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
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
