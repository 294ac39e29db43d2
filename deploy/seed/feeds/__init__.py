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

from dataclasses import dataclass, field
from typing import Any

from deploy.seed import departments as deps
from deploy.seed.feeds.camera_features import describe_cameras
from deploy.seed.feeds.cameras import Counters, generate_cameras
from deploy.seed.feeds.duplicates import duplicate_entry, plant_duplicates
from deploy.seed.feeds.sensors import generate_sensors
from deploy.seed.feeds.tables import Feature, ProgressCallback


@dataclass
class GeneratedFeeds:
    """The features (cameras first, then sensors) and the planted duplicates."""

    features: list[Feature]
    duplicates: list[dict[str, Any]] = field(default_factory=list)


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
    counters = Counters()
    cams, source = generate_cameras(cameras, seed, counters, progress)
    planted = plant_duplicates(cams, source, seed, counters)
    features = describe_cameras(cams, seed, counters, all_codes)
    features.extend(generate_sensors(sensors, seed, counters, all_codes, progress))
    duplicates = [duplicate_entry(kind, oi, di, features) for kind, oi, di in planted]
    duplicates.sort(key=lambda d: d["duplicate"]["line"])
    return GeneratedFeeds(features, duplicates)
