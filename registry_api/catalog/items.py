"""Catalog items sorted by the type digits of their 20-digit ids, checked one by one.

Channels (cameras, IP cameras, checkpoint cameras: what an encoder or NVR exposes) become
camera feeds; devices (DVR, video server, encoder, NVR) are the parents channels hang from;
business groups and virtual organisations form the tree a platform shows; a central
signalling server is a platform. Other types (alarm inputs, users) are not feeds: they are
skipped with the reason. A bad item is rejected with its index and reason and never sinks the
message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.feeds import check_lon_lat
from schemas.gb28181 import InvalidGbCode, decode_gb28181

CHANNEL_TYPES = frozenset({"131", "132", "121"})
NODE_KINDS = {
    "111": "device",
    "112": "device",
    "113": "device",
    "118": "device",
    "200": "platform",
    "215": "business_group",
    "216": "virtual_organisation",
}
STATUS_WORDS = {"ON": "ON", "ONLINE": "ON", "OFF": "OFF", "OFFLINE": "OFF"}
# What an event or a status says about liveness: the heartbeat report it becomes.
LIVENESS_OF = {"ON": "online", "OFF": "offline", "VLOST": "offline", "DEFECT": "offline"}
NAME_MAX = 200
VALUE_MAX = 1_000
ATTRIBUTE_FIELDS = (
    "Manufacturer", "Model", "Owner", "CivilCode", "Block", "Address", "Parental",
    "SafetyWay", "RegisterWay", "CertNum", "Certifiable", "ErrCode", "EndTime", "Secrecy",
    "IPAddress", "Port", "BusinessGroupID", "ParentID", "Info.PTZType", "Info.PositionType",
    "Info.RoomType", "Info.UseType", "Info.SupplyLightType", "Info.Resolution",
)  # fmt: skip


@dataclass
class CatalogEntryItem:
    """A checked item: a channel (``kind == "channel"``) or a tree node."""

    index: int
    device_id: str
    kind: str  # channel | device | platform | business_group | virtual_organisation
    name: str | None
    parent_id: str | None
    event: str | None
    status: str | None  # ON | OFF
    lon: float | None
    lat: float | None
    secret: bool
    attributes: dict[str, str]


@dataclass
class ItemProblem:
    index: int
    device_id: str | None
    message: str


class ItemRefused(ValueError):
    pass


def classify_items(
    items: list[dict[str, str]], *, platform_id: str, notify: bool, first_index: int = 0
) -> tuple[list[CatalogEntryItem], list[ItemProblem], list[ItemProblem]]:
    """(accepted items, rejected ones, skipped ones: not feeds nor tree nodes)."""
    accepted: list[CatalogEntryItem] = []
    rejected: list[ItemProblem] = []
    skipped: list[ItemProblem] = []
    seen: dict[str, int] = {}
    for offset, raw in enumerate(items):
        index = first_index + offset
        device_id = raw.get("DeviceID") or None
        try:
            item = _check_item(raw, index=index, platform_id=platform_id, notify=notify)
        except ItemRefused as error:
            rejected.append(ItemProblem(index, device_id, str(error)))
            continue
        if item is None:
            type_code = (device_id or "")[10:13]
            skipped.append(ItemProblem(index, device_id, f"type {type_code} is not a feed"))
            continue
        if not notify and item.device_id in seen:
            rejected.append(
                ItemProblem(
                    index,
                    device_id,
                    f"DeviceID appears earlier in this answer (index {seen[item.device_id]})",
                )
            )
            continue
        seen[item.device_id] = index
        accepted.append(item)
    return accepted, rejected, skipped


def _check_item(
    raw: dict[str, str], *, index: int, platform_id: str, notify: bool
) -> CatalogEntryItem | None:
    device_id = raw.get("DeviceID", "")
    try:
        code = decode_gb28181(device_id)
    except InvalidGbCode as error:
        raise ItemRefused(f"DeviceID: {error}") from None
    event = raw.get("Event") or None
    if event is not None:
        event = event.upper()
        if event not in EVENTS:
            raise ItemRefused(f"Event must be one of {', '.join(EVENTS)}")
    elif notify:
        raise ItemRefused("a Notify item needs an Event")
    kind = "channel" if code.type_code in CHANNEL_TYPES else NODE_KINDS.get(code.type_code)
    if kind is None:
        return None
    for name, value in raw.items():
        if len(value) > VALUE_MAX:
            raise ItemRefused(f"{name} is longer than {VALUE_MAX} characters")
    describes = event in (None, "ADD", "UPDATE")
    label = raw.get("Name") or None
    if describes and label is None:
        raise ItemRefused("Name is required")
    if label is not None and len(label) > NAME_MAX:
        raise ItemRefused(f"Name is longer than {NAME_MAX} characters")
    status = None
    if raw.get("Status"):
        status = STATUS_WORDS.get(raw["Status"].upper())
        if status is None:
            raise ItemRefused("Status must be ON or OFF")
    secrecy = raw.get("Secrecy", "")
    if secrecy not in ("", "0", "1"):
        raise ItemRefused("Secrecy must be 0 or 1")
    lon, lat = _position(raw)
    return CatalogEntryItem(
        index=index,
        device_id=device_id,
        kind=kind,
        name=label,
        parent_id=parent_of(raw, kind=kind, platform_id=platform_id),
        event=event,
        status=status,
        lon=lon,
        lat=lat,
        secret=secrecy == "1",
        attributes={field: raw[field] for field in ATTRIBUTE_FIELDS if raw.get(field)},
    )


def _position(raw: dict[str, str]) -> tuple[float | None, float | None]:
    """Longitude/latitude, or (None, None) for an unplaced channel. Platforms write 0 or
    nothing when they do not know: both mean unplaced."""
    lon_text, lat_text = raw.get("Longitude", ""), raw.get("Latitude", "")
    if not lon_text and not lat_text:
        return None, None
    try:
        lon, lat = float(lon_text), float(lat_text)
    except ValueError:
        raise ItemRefused("Longitude and Latitude must both be numbers") from None
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise ItemRefused("Longitude and Latitude must be finite")
    if lon == 0.0 and lat == 0.0:
        return None, None
    try:
        check_lon_lat(lon, lat)
    except ValueError as error:
        raise ItemRefused(str(error)) from None
    return lon, lat


def parent_of(raw: dict[str, str], *, kind: str, platform_id: str) -> str | None:
    """The node an item hangs from: the last id of its ParentID path, else its business
    group, else the platform (a platform itself hangs from nothing)."""
    if kind == "platform":
        return None
    path = [part for part in raw.get("ParentID", "").replace("\\", "/").split("/") if part]
    device_id = raw.get("DeviceID")
    for candidate in reversed(path):
        if candidate != device_id and len(candidate) == 20 and candidate.isdigit():
            return candidate
    group = raw.get("BusinessGroupID", "")
    if kind != "business_group" and len(group) == 20 and group.isdigit() and group != device_id:
        return group
    return platform_id


EVENTS = ("ON", "OFF", "VLOST", "DEFECT", "ADD", "DEL", "UPDATE")
