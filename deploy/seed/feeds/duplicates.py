"""Phase 2: planted duplicates (re-registrations of public-security road cameras by other
departments), and their entries in the duplicates report."""

from __future__ import annotations

from typing import Any

from deploy.seed.city import (
    Rand,
    destination,
    district_of,
    haversine_m,
    in_bbox,
)
from deploy.seed.feeds.cameras import Camera, Counters, wrap_heading
from deploy.seed.feeds.positions import Placement, PointSource
from deploy.seed.feeds.tables import (
    DUPLICATE_KINDS,
    DUPLICATE_SHARE,
    NEARBY_M,
    Feature,
)


def plant_duplicates(
    cams: list[Camera], source: PointSource, seed: int, counters: Counters
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
            "heading": wrap_heading(orig.fov["heading"] + rng.uniform(-12.0, 12.0)),
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


def duplicate_entry(kind: str, oi: int, di: int, features: list[Feature]) -> dict[str, Any]:
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
