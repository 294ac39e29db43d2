"""Conversions of a feed between its three shapes: validated input, table row, JSON document.

* :func:`content_values` turns validated input into column values (plus a content hash that
  tells an unchanged re-import from an update);
* :func:`feed_document` turns a row into what the API shows (``show_url`` decides whether the
  internal stream URL is in it) and what the feed-metadata events carry;
* :func:`input_document` turns a row back into the input shape, for merge-patching.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from registry_api.feeds.gb28181 import decode_gb28181
from registry_api.feeds.geodesy import fov_polygon
from registry_api.identity.principal import Principal
from schemas.feeds import FeedProperties, PointGeometry

Row = Mapping[Any, Any]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
POLYGON_DECIMALS = 7  # about 1 cm


def new_feed_id() -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, 26 Crockford base-32 characters.

    Ids sort by registration time, which keeps list pages stable and appends cheap.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    characters = []
    for _ in range(26):
        characters.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(characters))


def stream_url_key(url: str) -> str:
    """Hash of the stream URL with credentials dropped and scheme/host lower-cased.

    Two registrations of one stream compare equal through it without the URL itself being
    shown to anyone who may not see it.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rstrip("/") or ""
    normalised = urlunsplit((parts.scheme.lower(), netloc, path, parts.query, ""))
    return hashlib.sha256(normalised.encode()).hexdigest()


def content_values(properties: FeedProperties, location: PointGeometry) -> dict[str, Any]:
    """Column values of a validated feed, without identity, version or status columns."""
    gb = properties.gb
    fov = properties.fov
    stream = properties.stream
    values: dict[str, Any] = {
        "kind": properties.kind,
        "code": properties.code,
        "owner": properties.owner,
        "name": properties.name,
        "lon": location.lon,
        "lat": location.lat,
        "altitude": properties.altitude,
        "gb_region": gb.region if gb else None,
        "gb_industry": gb.industry if gb else None,
        "gb_type": gb.type_code if gb else None,
        "gb_network": gb.network if gb else None,
        "fov_heading": fov.heading if fov else None,
        "fov_angle": fov.angle if fov else None,
        "fov_range_m": fov.range_m if fov else None,
        "coverage": properties.coverage.model_dump() if properties.coverage else None,
        "stream_protocol": stream.protocol,
        "stream_url": stream.url,
        "stream_url_key": stream_url_key(stream.url),
        "media_path": stream.media_path,
        "datastreams": [datastream.model_dump() for datastream in properties.datastreams],
        "catalog": properties.catalog.model_dump(mode="json") if properties.catalog else None,
        "sharing_class": properties.sharing.sharing_class,
        "sharing": properties.sharing.model_dump(mode="json", by_alias=True),
        "tags": list(properties.tags),
    }
    values["content_hash"] = hashlib.sha1(
        orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    return values


def can_see_internal(principal: Principal, owner: str) -> bool:
    """The owner department's users and the city admin see internal fields (the stream URL)."""
    return principal.is_city_admin or principal.department == owner


def fov_of(row: Row) -> dict[str, float] | None:
    if row["fov_heading"] is None:
        return None
    return {"heading": row["fov_heading"], "angle": row["fov_angle"], "range_m": row["fov_range_m"]}


def fov_polygon_geojson(row: Row) -> dict[str, Any] | None:
    if row["fov_heading"] is None:
        return None
    polygon = fov_polygon(
        row["lon"], row["lat"], row["fov_heading"], row["fov_angle"], row["fov_range_m"]
    )
    ring = [
        [round(x, POLYGON_DECIMALS), round(y, POLYGON_DECIMALS)] for x, y in polygon.exterior.coords
    ]
    return {"type": "Polygon", "coordinates": [ring]}


def feed_document(row: Row, *, show_url: bool, with_polygon: bool = True) -> dict[str, Any]:
    """The feed as JSON. ``show_url`` only for its owner's users, the city admin and events."""
    stream: dict[str, Any] = {"protocol": row["stream_protocol"], "media_path": row["media_path"]}
    if show_url:
        stream["url"] = row["stream_url"]
    document: dict[str, Any] = {
        "id": row["id"],
        "kind": row["kind"],
        "code": row["code"],
        "owner": row["owner"],
        "name": row["name"],
        "location": {"type": "Point", "coordinates": [row["lon"], row["lat"]]},
        "altitude": row["altitude"],
        "fov": fov_of(row),
        "coverage": row["coverage"],
        "gb28181": decode_gb28181(row["code"]).as_dict() if row["kind"] == "camera" else None,
        "stream": stream,
        "datastreams": row["datastreams"],
        "catalog": row["catalog"],
        "sharing": row["sharing"],
        "tags": row["tags"],
        "status": row["status"],
        "last_seen": row["last_seen"],
        "version": row["version"],
        "revision": row["revision"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "retired": row["retired_at"] is not None,
        "retired_at": row["retired_at"],
    }
    if with_polygon:
        document["fov_polygon"] = fov_polygon_geojson(row)
    return document


def event_data(row: Row) -> dict[str, Any]:
    """Payload of a feed-metadata event: the full state, internal fields included."""
    return feed_document(row, show_url=True, with_polygon=False)


def input_document(row: Row) -> dict[str, Any]:
    """The row in the input shape of ``POST /v1/feeds`` (the base of a merge patch)."""
    return {
        "kind": row["kind"],
        "code": row["code"],
        "owner": row["owner"],
        "name": row["name"],
        "location": {"type": "Point", "coordinates": [row["lon"], row["lat"]]},
        "altitude": row["altitude"],
        "fov": fov_of(row),
        "coverage": row["coverage"],
        "stream": {
            "protocol": row["stream_protocol"],
            "url": row["stream_url"],
            "media_path": row["media_path"],
        },
        "datastreams": row["datastreams"],
        "catalog": row["catalog"],
        "sharing": row["sharing"],
        "tags": row["tags"],
    }
