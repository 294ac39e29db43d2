"""A deterministic stream of access requests against the demo city.

Meant for the access API and the analytics: who asks for which feeds, why, for how long.
The mix is skewed the way real exchanges are: a few departments (transport, emergency
management, public security, urban management) make most requests; transport, emergency
management, fire rescue and police ask for road cameras near incidents in bursts; the rest ask
for named feeds or search near a place, with a daily rhythm (office hours, rush hours) and
quieter weekends. Only public security marks requests as emergencies (break-glass live view),
mostly around incidents. Nothing steers requests to the conditions written on the feeds, so
some fall outside them or target ``not_shared`` feeds: the policy engine must refuse or route
those.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from deploy.seed import departments as deps
from deploy.seed.city import CENTRE, Rand, WeightedTable

# Relative request volume of the heavy requesters; the others follow a gentle Zipf curve.
_HEAVY: dict[str, float] = {
    deps.TB: 18.0,
    deps.EMB: 15.0,
    deps.PSB: 13.0,
    deps.CMB: 9.0,
    deps.EEB: 5.0,
    deps.FIRE: 5.0,
    deps.WAB: 4.0,
    deps.HC: 3.0,
}
# Share of each incident responder's requests that are about an incident.
_INCIDENT_SHARE: dict[str, float] = {deps.TB: 0.55, deps.EMB: 0.7, deps.FIRE: 0.7, deps.PSB: 0.35}
_SENSOR_MINDED = {deps.EEB, deps.HC, deps.WAB, "lz-meteo", "lz-agri", "lz-forest", "lz-nrb"}
_PURPOSE_OF: dict[str, str] = {
    deps.TB: "traffic management",
    deps.EMB: "emergency response",
    deps.FIRE: "emergency response",
    deps.PSB: "public safety",
    deps.CMB: "city management",
    deps.EEB: "environmental monitoring",
    deps.HC: "environmental monitoring",
    deps.WAB: "flood control",
    "lz-meteo": "environmental monitoring",
    "lz-nrb": "environmental monitoring",
    "lz-agri": "environmental monitoring",
    "lz-forest": "environmental monitoring",
    "lz-hurd": "city management",
    "lz-amr": "city management",
    "lz-cgdo": "city management",
    "lz-edu": "public safety",
    "lz-procur": "public safety",
    "lz-justice": "public safety",
}
_ALL_PURPOSES = (
    "traffic management",
    "emergency response",
    "city management",
    "environmental monitoring",
    "public safety",
    "flood control",
)
_CAMERA_ACTION = WeightedTable(
    [("live", 0.50), ("playback", 0.22), ("snapshot", 0.20), ("download", 0.05), ("ptz", 0.03)]
)
_SENSOR_ACTION = WeightedTable([("read", 0.9), ("download", 0.1)])
_INCIDENT_ACTION = WeightedTable([("live", 0.8), ("playback", 0.15), ("snapshot", 0.05)])

# Requests per hour of day (UTC is used as local time in the demo).
_OFFICE_HOURS = (
    0.2,
    0.1,
    0.1,
    0.1,
    0.1,
    0.2,
    0.4,
    0.8,
    1.6,
    2.4,
    2.6,
    2.4,
    1.4,
    1.2,
    2.2,
    2.4,
    2.3,
    1.8,
    1.0,
    0.7,
    0.6,
    0.5,
    0.4,
    0.3,
)
_TRAFFIC_HOURS = (
    0.3,
    0.2,
    0.2,
    0.2,
    0.3,
    0.6,
    1.4,
    2.8,
    3.0,
    2.0,
    1.6,
    1.6,
    1.7,
    1.5,
    1.6,
    1.8,
    2.2,
    3.0,
    3.2,
    2.0,
    1.4,
    1.0,
    0.7,
    0.5,
)
_ROUND_THE_CLOCK = (
    0.7,
    0.6,
    0.5,
    0.5,
    0.5,
    0.6,
    0.8,
    1.1,
    1.3,
    1.3,
    1.3,
    1.3,
    1.2,
    1.2,
    1.3,
    1.3,
    1.3,
    1.3,
    1.3,
    1.2,
    1.1,
    1.0,
    0.9,
    0.8,
)
_HOURS = {
    "office": WeightedTable(list(enumerate(_OFFICE_HOURS))),
    "traffic": WeightedTable(list(enumerate(_TRAFFIC_HOURS))),
    "round": WeightedTable(list(enumerate(_ROUND_THE_CLOCK))),
}
_WEEKEND_FACTOR = {"office": 0.35, "traffic": 0.8, "round": 1.0}


@dataclass(frozen=True)
class _Incident:
    lon: float
    lat: float
    at: datetime
    radius_m: int


def _rhythm(code: str) -> str:
    if code in (deps.TB, deps.PSB):
        return "traffic"
    if code in (deps.EMB, deps.FIRE):
        return "round"
    return "office"


class _Clock:
    def __init__(self, start: datetime, days: int) -> None:
        self.start = start
        self.days = max(1, days)
        self._day_tables = {
            rhythm: WeightedTable(
                [
                    (d, factor if (start + timedelta(days=d)).weekday() >= 5 else 1.0)
                    for d in range(self.days)
                ]
            )
            for rhythm, factor in _WEEKEND_FACTOR.items()
        }

    def draw(self, rng: Rand, rhythm: str) -> datetime:
        day = rng.weighted(self._day_tables[rhythm])
        hour = rng.weighted(_HOURS[rhythm])
        second = rng.randint(0, 3599)
        return self.start + timedelta(days=day, hours=hour, seconds=second)


def _duration(rng: Rand, action: str) -> int:
    if action == "live":
        return rng.choice((5, 10, 15, 30, 30, 60, 60, 120, 240))
    if action == "playback":
        return rng.randint(10, 240)
    if action == "snapshot":
        return 1
    if action == "ptz":
        return rng.randint(5, 30)
    if action == "download":
        return rng.choice((30, 60, 240, 1440))
    return rng.choice((60, 240, 1440))  # read


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_access_requests(
    features: list[dict[str, Any]],
    departments: list[dict[str, Any]],
    count: int,
    seed: int,
    start: datetime,
    days: int = 7,
) -> Iterator[dict[str, Any]]:
    """``count`` access requests spread over ``days`` days from ``start``, in time order.

    Each is ``{"requester", "purpose", "action", "duration_minutes", "emergency",
    "selection", "at"}``; ``selection`` is ``{"feed_codes": [...]}`` or
    ``{"near": [lon, lat, metres], "kind": "camera"|"sensor", "department": code|None}``.
    Only departments of ``departments`` and codes of ``features`` are referenced.
    """
    if not departments:
        raise ValueError("no departments to request from")
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    rng = Rand(f"feedgrid-demo:{seed}:traffic")
    codes = [str(d["code"]) for d in departments]
    known = set(codes)
    kinds = {str(d["code"]): str(d.get("kind", "other")) for d in departments}
    requester_table = _requester_table(codes)

    cameras: list[int] = []
    sensors: list[int] = []
    by_owner_kind: dict[tuple[str, str], list[int]] = {}
    road_cameras: list[int] = []
    for i, f in enumerate(features):
        p = f["properties"]
        kind = p["kind"]
        (cameras if kind == "camera" else sensors).append(i)
        by_owner_kind.setdefault((p["owner"], kind), []).append(i)
        if kind == "camera" and "road" in p["tags"] and p["owner"] in (deps.TB, deps.PSB):
            road_cameras.append(i)

    clock = _Clock(start, days)
    anchors = road_cameras or cameras or list(range(len(features)))
    incidents: list[_Incident] = []
    for _ in range(max(1, count // 25)):
        if anchors:
            lon, lat = features[rng.choice(anchors)]["geometry"]["coordinates"]
        else:
            lon, lat = CENTRE
        incidents.append(
            _Incident(lon, lat, clock.draw(rng, "round"), rng.choice((300, 500, 800, 1000)))
        )

    def position(i: int) -> tuple[float, float]:
        lon, lat = features[i]["geometry"]["coordinates"]
        return float(lon), float(lat)

    out: list[tuple[datetime, int, dict[str, Any]]] = []
    for seq in range(count):
        requester = rng.weighted(requester_table)
        rhythm = _rhythm(requester)
        purpose = _PURPOSE_OF.get(requester, "city management")
        if rng.chance(0.2):
            purpose = rng.choice(_ALL_PURPOSES)
        # Emergency (break-glass) access is for public security only.
        emergency_allowed = kinds.get(requester) == "public_security"
        selection: dict[str, Any]
        if rng.chance(_INCIDENT_SHARE.get(requester, 0.0)):
            inc = rng.choice(incidents)
            at = inc.at + timedelta(seconds=rng.randint(0, 90 * 60))
            action = rng.weighted(_INCIDENT_ACTION)
            owners = [c for c in (deps.TB, deps.PSB) if c in known and c != requester]
            department = rng.choice(owners) if owners and rng.chance(0.65) else None
            selection = {
                "near": [inc.lon, inc.lat, inc.radius_m],
                "kind": "camera",
                "department": department,
            }
            emergency = emergency_allowed and rng.chance(0.4)
            out.append(
                (
                    at,
                    seq,
                    _request(
                        requester, purpose, action, _duration(rng, action), emergency, selection, at
                    ),
                )
            )
            continue
        at = clock.draw(rng, rhythm)
        want_sensor = rng.chance(0.6 if requester in _SENSOR_MINDED else 0.08)
        pool = (sensors if want_sensor else cameras) or sensors or cameras
        if not pool:  # no features at all: search around the centre
            action = "live"
            selection = {"near": [CENTRE[0], CENTRE[1], 1000], "kind": "camera", "department": None}
        else:
            # Another department's feed (departments rarely ask for their own).
            for _ in range(20):
                anchor = rng.choice(pool)
                if features[anchor]["properties"]["owner"] != requester:
                    break
            p = features[anchor]["properties"]
            kind = p["kind"]
            action = rng.weighted(_SENSOR_ACTION if kind == "sensor" else _CAMERA_ACTION)
            if rng.chance(0.7):
                siblings = by_owner_kind[(p["owner"], kind)]
                extra = rng.sample(siblings, rng.randint(0, 3)) if rng.chance(0.4) else []
                chosen = [anchor] + [i for i in extra if i != anchor]
                feed_codes = list(dict.fromkeys(features[i]["properties"]["code"] for i in chosen))
                selection = {"feed_codes": feed_codes}
            else:
                lon, lat = position(anchor)
                department = p["owner"] if rng.chance(0.5) and p["owner"] in known else None
                selection = {
                    "near": [lon, lat, rng.choice((200, 500, 1000, 2000))],
                    "kind": kind,
                    "department": department,
                }
        emergency = emergency_allowed and rng.chance(0.03)
        out.append(
            (
                at,
                seq,
                _request(
                    requester, purpose, action, _duration(rng, action), emergency, selection, at
                ),
            )
        )
    out.sort(key=lambda item: (item[0], item[1]))
    for _, _, request in out:
        yield request


def _requester_table(codes: Sequence[str]) -> WeightedTable[str]:
    items: list[tuple[str, float]] = []
    rank = 0
    for code in codes:
        if code in _HEAVY:
            items.append((code, _HEAVY[code]))
        else:
            items.append((code, 2.5 / (1.0 + 0.35 * rank)))
            rank += 1
    return WeightedTable(items)


def _request(
    requester: str,
    purpose: str,
    action: str,
    duration: int,
    emergency: bool,
    selection: dict[str, Any],
    at: datetime,
) -> dict[str, Any]:
    return {
        "requester": requester,
        "purpose": purpose,
        "action": action,
        "duration_minutes": duration,
        "emergency": emergency,
        "selection": selection,
        "at": _iso(at),
    }
