"""The sensors: type, owner, position, datastreams, stream URL and catalog entry."""

from __future__ import annotations

import numpy as np

from deploy.seed import departments as deps
from deploy.seed.city import (
    PLACES,
    Rand,
    district_of,
)
from deploy.seed.feeds.attributes import article, feature, ground_m, publish_date, sharing_block
from deploy.seed.feeds.cameras import Counters, pick_sharing_class
from deploy.seed.feeds.positions import Placement, PointSource, nearest_places, river_distances_m
from deploy.seed.feeds.tables import (
    MQTT_BROKER,
    SENSOR_MIN_SPACING_M,
    SENSOR_PLACEMENT,
    SENSOR_TYPE_TABLE,
    Feature,
    ProgressCallback,
    SensorType,
)


def generate_sensors(
    count: int,
    seed: int,
    counters: Counters,
    all_codes: set[str],
    progress: ProgressCallback | None,
) -> list[Feature]:
    rng = Rand(f"feedgrid-demo:{seed}:sensors")
    source = PointSource(SENSOR_MIN_SPACING_M)
    records: list[tuple[SensorType, str, Placement]] = []
    for _ in range(count):
        st = rng.weighted(SENSOR_TYPE_TABLE)
        owner = rng.weighted(st.owners)
        component = rng.weighted(SENSOR_PLACEMENT[st.key])
        records.append((st, owner, source.draw(rng, component)))
    if not records:
        return []
    lons = np.array([r[2].lon for r in records])
    lats = np.array([r[2].lat for r in records])
    place_idx = nearest_places(lons, lats).tolist()
    river_m = river_distances_m(lons, lats).tolist()
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
            url = f"mqtt://10.20.0.{MQTT_BROKER[owner]}:1883/{st.abbr}/{serial:06d}"
        else:
            url = (
                f"http://10.20.1.{MQTT_BROKER[owner]}:8080/api/v1/{st.abbr}/"
                f"{serial:06d}/observations"
            )
        mount = (
            0.0
            if st.key in ("water_level", "water_quality", "waterlogging")
            else (rng.uniform(2, 20) if st.key == "air_quality" else rng.uniform(2, 8))
        )
        ground = ground_m(
            river_m[i], 0.0 if st.key in ("water_level", "water_quality") else rng.normal(0, 6)
        )
        altitude = None if rng.chance(0.05) else round(ground + mount, 1)
        cls = pick_sharing_class(rng, st.sharing)
        sharing = sharing_block(rng, owner, cls, False, all_codes)
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
                f"Observations of {article(st.label)} {st.label} at {place} "
                f"({district} District), run by the {owner_names[owner]}: "
                + ", ".join(ds[0] for ds in st.datastreams)
                + "."
            ),
            "format": "application/json",
            "classification": "theme" if u < 0.6 else "basic" if u < 0.9 else "department",
            "update_cycle": st.update_cycle,
            "open_to_public": cls == "unconditional" and rng.chance(st.open_to_public),
            "publish_date": publish_date(rng),
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
        out.append(feature(pl.lon, pl.lat, props))
        if progress and (i + 1) % 500 == 0:
            progress("sensors", 500)
    if progress and count % 500:
        progress("sensors", count % 500)
    return out
