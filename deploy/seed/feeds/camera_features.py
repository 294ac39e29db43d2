"""Phase 3 for cameras: stream URLs, tags, names, coverage and catalog entry, from the final
positions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deploy.seed import departments as deps
from deploy.seed.city import (
    PLACES,
    Rand,
    destination,
    district_of,
)
from deploy.seed.feeds.attributes import feature, ground_m, publish_date, sharing_block
from deploy.seed.feeds.cameras import Camera, Counters
from deploy.seed.feeds.positions import nearest_places, river_distances_m
from deploy.seed.feeds.tables import IP_BASE, SIP_PLATFORM, Feature


def _ip(owner: str, n: int) -> str:
    base = IP_BASE[owner]
    return f"10.{base + n // (255 * 254)}.{(n // 254) % 255}.{n % 254 + 1}"


def _camera_stream(owner: str, protocol: str, host: int, code: str) -> dict[str, str]:
    base = IP_BASE[owner]
    if protocol == "rtsp":
        ip, channel = _ip(owner, host // 8), host % 8 + 1
        if (host // 8) % 3 == 0:
            url = f"rtsp://{ip}:554/cam/realmonitor?channel={channel}&subtype=0"
        else:
            url = f"rtsp://{ip}:554/Streaming/Channels/{channel}01"
    elif protocol == "gb28181":
        url = f"gb28181://{SIP_PLATFORM[owner]}@10.{base}.255.250:5060/{code}"
    elif protocol == "hls":
        url = f"http://10.{base}.255.{20 + host % 8}:8080/hls/{code}/index.m3u8"
    elif protocol == "rtmp":
        url = f"rtmp://10.{base}.255.{30 + host % 4}:1935/live/{code}"
    elif protocol == "webrtc":
        url = f"http://10.{base}.255.{40 + host % 4}:8889/{owner}/{code}/whep"
    else:  # pragma: no cover - tables only hold the protocols above
        raise ValueError(protocol)
    return {"protocol": protocol, "url": url, "media_path": f"{owner}/{code}"}


def _camera_tags(rng: Rand, cam: Camera, river_m: float) -> list[str]:
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


def describe_cameras(
    cams: list[Camera], seed: int, counters: Counters, all_codes: set[str]
) -> list[Feature]:
    rng = Rand(f"feedgrid-demo:{seed}:camera-attributes")
    if not cams:
        return []
    lons = np.array([c.place.lon for c in cams])
    lats = np.array([c.place.lat for c in cams])
    place_idx = nearest_places(lons, lats).tolist()
    river_m = river_distances_m(lons, lats).tolist()
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
            else round(ground_m(river_m[i], rng.normal(0, 6)) + rng.uniform(3, 15), 1)
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
        sharing = sharing_block(rng, c.owner, c.sharing, True, all_codes)
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
            "publish_date": publish_date(rng),
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
        out.append(feature(c.place.lon, c.place.lat, props))
    return out
