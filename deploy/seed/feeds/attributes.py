"""Phase 3 attributes common to cameras and sensors: sharing block, catalog dates, altitude,
the GeoJSON Feature."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from deploy.seed.city import (
    Rand,
)
from deploy.seed.feeds.tables import (
    AFFINITY,
    CAMERA_ACTIONS,
    LEGAL_BASIS,
    OWNER_PURPOSES,
    PUBLISH_DAYS,
    PUBLISH_EPOCH,
    PURPOSES,
    Feature,
)


def sharing_block(
    rng: Rand, owner: str, cls: str, is_camera: bool, all_codes: set[str]
) -> dict[str, Any]:
    if cls == "unconditional":
        return {"class": cls, "conditions": None, "legal_basis": None}
    if cls == "not_shared":
        return {"class": cls, "conditions": None, "legal_basis": rng.choice(LEGAL_BASIS[owner])}
    affinity = [c for c in AFFINITY[owner] if c in all_codes and c != owner]
    departments = sorted(rng.sample(affinity, rng.randint(2, 4)))
    owner_purposes = OWNER_PURPOSES[owner]
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


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def publish_date(rng: Rand) -> str:
    return (PUBLISH_EPOCH + timedelta(days=rng.randint(0, PUBLISH_DAYS))).isoformat()


def ground_m(river_m: float, jitter: float) -> float:
    return min(2150.0, 1512.0 + 0.045 * river_m + jitter)


def feature(lon: float, lat: float, properties: dict[str, Any]) -> Feature:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": properties,
    }
