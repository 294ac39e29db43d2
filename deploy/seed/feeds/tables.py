"""The static tables of the demo city's feeds: owner kinds, GB/T 28181 code parts per kind,
placement and sharing mixtures, protocols, purposes, legal bases and the sensor types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from deploy.seed import departments as deps
from deploy.seed.city import (
    WeightedTable,
)

Feature = dict[str, Any]


ProgressCallback = Callable[[str, int], None]


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


INDUSTRY = {
    "public_security": WeightedTable([("00", 0.50), ("01", 0.30), ("02", 0.12), ("03", 0.08)]),
    "transport": WeightedTable([("04", 0.60), ("05", 0.30), ("06", 0.05), ("07", 0.05)]),
    "urban_management": WeightedTable([("08", 1.0)]),
    "environment": WeightedTable([("09", 1.0)]),
}


NETWORK = {
    "public_security": WeightedTable([("0", 0.55), ("1", 0.40), ("5", 0.05)]),
    "transport": WeightedTable([("2", 0.65), ("6", 0.30), ("8", 0.05)]),
    "urban_management": WeightedTable([("2", 0.45), ("6", 0.55)]),
    "environment": WeightedTable([("2", 0.60), ("6", 0.40)]),
}


CAMERA_TYPES = ("121", "131", "132")


# (road, centre, uniform) mixture per industry: overall about 45 / 35 / 20.
PLACEMENT = {
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
CAMERA_SHARING = {
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


CAMERA_PROTOCOLS = {
    "public_security": WeightedTable([("rtsp", 0.55), ("gb28181", 0.45)]),
    "transport": WeightedTable([("rtsp", 0.50), ("gb28181", 0.38), ("hls", 0.07), ("rtmp", 0.05)]),
    "urban_management": WeightedTable([("rtsp", 0.60), ("gb28181", 0.28), ("hls", 0.12)]),
    "environment": WeightedTable([("rtsp", 0.65), ("gb28181", 0.20), ("webrtc", 0.15)]),
}


# Second octet of each owner's private address block (10.x.0.0/15).
IP_BASE = {deps.PSB: 12, deps.TB: 14, deps.CMB: 16, deps.EEB: 18, deps.WAB: 22}


MQTT_BROKER = {deps.EEB: 5, deps.TB: 6, deps.WAB: 7, deps.CMB: 8}


# The owner's GB/T 28181 central signalling server (type 200), as the SIP platform id.
SIP_PLATFORM = {
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


AFFINITY: dict[str, tuple[str, ...]] = {
    deps.PSB: (deps.TB, deps.EMB, deps.FIRE, deps.CMB, "lz-procur", "lz-justice", "lz-cgdo"),
    deps.TB: (deps.PSB, deps.EMB, deps.FIRE, deps.CMB, "lz-data", "lz-hurd"),
    deps.CMB: (deps.PSB, deps.TB, "lz-hurd", "lz-amr", "lz-cgdo", deps.EMB),
    deps.EEB: (deps.HC, deps.WAB, "lz-meteo", deps.EMB, "lz-nrb", "lz-agri", "lz-forest"),
    deps.WAB: (deps.EMB, deps.FIRE, "lz-meteo", "lz-nrb", deps.EEB, "lz-agri", deps.CMB),
}


OWNER_PURPOSES: dict[str, tuple[str, ...]] = {
    deps.PSB: ("public safety", "emergency response", "traffic management"),
    deps.TB: ("traffic management", "emergency response", "public safety"),
    deps.CMB: ("city management", "public safety", "emergency response"),
    deps.EEB: ("environmental monitoring", "emergency response", "city management"),
    deps.WAB: ("flood control", "emergency response", "environmental monitoring"),
}


LEGAL_BASIS: dict[str, tuple[str, ...]] = {
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


PUBLISH_EPOCH = date(2019, 1, 1)


PUBLISH_DAYS = 6 * 365


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


SENSOR_TYPE_TABLE = WeightedTable([(t, t.weight) for t in SENSOR_TYPES])


SENSOR_PLACEMENT = {t.key: WeightedTable(list(t.placement)) for t in SENSOR_TYPES}


CAMERA_MIN_SPACING_M = 9.0


SENSOR_MIN_SPACING_M = 9.0


DUPLICATE_SHARE = 0.005


# Named like the registry's duplicate reasons. Each planted pair matches exactly one rule:
# same_code and same_stream_url pairs sit 4-15 m apart (the two departments surveyed the
# device differently), nearby_overlapping_view pairs 0.5-2.5 m apart with other codes and URLs.
DUPLICATE_KINDS = ("same_code", "same_stream_url", "nearby_overlapping_view")


NEARBY_M = 3.0
