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
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from registry_api.feeds.geodesy import fov_ring_arrays
from registry_api.identity.principal import Principal
from schemas.feeds import FeedProperties, PointGeometry
from schemas.gb28181 import DEVICE_TYPES, INDUSTRIES, NETWORKS

Row = Mapping[Any, Any]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
POLYGON_DECIMALS = 7  # about 1 cm


_ALPHABET = np.frombuffer(_CROCKFORD.encode(), dtype=np.uint8)
_FIVE_BITS = np.array([16, 8, 4, 2, 1], dtype=np.uint8)
ID_LENGTH = 24


def new_feed_ids(count: int) -> list[str]:
    """``count`` ids: 48-bit millisecond time then 72 random bits, as 24 Crockford base-32
    characters (5 bits each, most significant first, so text order is time order).

    Ids sort by registration time, which keeps list pages stable and index merges cheap.
    Built with numpy: a bulk import names 57,000 feeds at once.
    """
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw = np.empty((count, 15), dtype=np.uint8)
    raw[:, :6] = np.frombuffer(millis, dtype=np.uint8)
    raw[:, 6:] = np.frombuffer(os.urandom(9 * count), dtype=np.uint8).reshape(count, 9)
    groups = np.unpackbits(raw, axis=1).reshape(count, ID_LENGTH, 5) @ _FIVE_BITS
    text = _ALPHABET[groups].tobytes().decode()
    return [text[i : i + ID_LENGTH] for i in range(0, count * ID_LENGTH, ID_LENGTH)]


def new_feed_id() -> str:
    return new_feed_ids(1)[0]


def gb28181_document(row: Row) -> dict[str, str]:
    """The decoded parts of a camera's code, from the columns that hold them."""
    return {
        "region": row["gb_region"],
        "industry": row["gb_industry"],
        "industry_label": INDUSTRIES[row["gb_industry"]],
        "type": row["gb_type"],
        "type_label": DEVICE_TYPES[row["gb_type"]],
        "network": row["gb_network"],
        "network_label": NETWORKS[row["gb_network"]],
        "serial": row["code"][14:],
    }


_URL_PARTS = re.compile(r"^([^:]+)://(?:[^@/?#]*@)?([^/?#]*)([^#]*)")


def stream_url_key(url: str) -> str:
    """Hash of the stream URL with credentials and fragment dropped, scheme and host
    lower-cased and a trailing slash ignored.

    Two registrations of one stream compare equal through it without the URL itself being
    shown to anyone who may not see it.
    """
    match = _URL_PARTS.match(url)
    if match is None:
        normalised = url
    else:
        scheme, host, rest = match.groups()
        normalised = f"{scheme.lower()}://{host.lower()}{rest.rstrip('/')}"
    return hashlib.sha256(normalised.encode()).hexdigest()


def content_values(properties: FeedProperties, location: PointGeometry | None) -> dict[str, Any]:
    """Column values of a validated feed, without identity, version or status columns.
    ``location`` None: an unplaced feed (no coordinates yet)."""
    gb = properties.gb
    fov = properties.fov
    stream = properties.stream
    values: dict[str, Any] = {
        "kind": properties.kind,
        "code": properties.code,
        "owner": properties.owner,
        "name": properties.name,
        "lon": location.lon if location is not None else None,
        "lat": location.lat if location is not None else None,
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
    # The values are built in a fixed order (nested documents in field order): no key sorting.
    values["content_hash"] = hashlib.sha1(orjson.dumps(values)).hexdigest()
    return values


def location_document(row: Row) -> dict[str, Any] | None:
    """The feed's position as a GeoJSON Point; None for an unplaced feed."""
    if row["lon"] is None or row["lat"] is None:
        return None
    return {"type": "Point", "coordinates": [row["lon"], row["lat"]]}


def can_see_internal(principal: Principal, owner: str) -> bool:
    """The owner department's users and the city admin see internal fields (the stream URL)."""
    return principal.is_city_admin or principal.department == owner


def fov_of(row: Row) -> dict[str, float] | None:
    if row["fov_heading"] is None:
        return None
    return {"heading": row["fov_heading"], "angle": row["fov_angle"], "range_m": row["fov_range_m"]}


def fov_polygons_geojson(rows: Sequence[Row]) -> list[dict[str, Any] | None]:
    """The field-of-view polygons of the rows as GeoJSON (computed together: one numpy pass)."""
    return fov_polygons_of(
        [
            (row["lon"], row["lat"], row["fov_heading"], row["fov_angle"], row["fov_range_m"])
            if row["fov_heading"] is not None and row["lon"] is not None  # unplaced: nowhere
            else None
            for row in rows
        ]
    )


def fov_polygons_of(
    views: Sequence[tuple[float, float, float, float, float] | None], *, as_arrays: bool = False
) -> list[dict[str, Any] | None]:
    """GeoJSON polygons of (lon, lat, heading, angle, range_m) views (None: no view).

    ``as_arrays``: the rings stay numpy arrays, for ``orjson.OPT_SERIALIZE_NUMPY`` (which
    writes float64 exactly as it writes Python floats) instead of thousands of small lists.
    """
    with_view = [position for position, view in enumerate(views) if view is not None]
    polygons: list[dict[str, Any] | None] = [None] * len(views)
    if not with_view:
        return polygons
    columns = np.array([views[position] for position in with_view], dtype=np.float64)
    rings = fov_ring_arrays(*columns.T, decimals=POLYGON_DECIMALS)
    for position, ring in zip(with_view, rings, strict=True):
        polygons[position] = {
            "type": "Polygon",
            "coordinates": [ring if as_arrays else ring.tolist()],
        }
    return polygons


def feed_documents(rows: Sequence[Row], principal: Principal) -> list[dict[str, Any]]:
    """Documents of many rows as ``principal`` may see them, polygons computed in one pass."""
    documents = []
    for row, polygon in zip(rows, fov_polygons_geojson(rows), strict=True):
        document = feed_document(
            row, show_url=can_see_internal(principal, row["owner"]), with_polygon=False
        )
        document["fov_polygon"] = polygon
        documents.append(document)
    return documents


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
        "location": location_document(row),
        "altitude": row["altitude"],
        "fov": fov_of(row),
        "coverage": row["coverage"],
        "gb28181": gb28181_document(row) if row["kind"] == "camera" else None,
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
        document["fov_polygon"] = fov_polygons_geojson([row])[0]
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
        "location": location_document(row),
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
