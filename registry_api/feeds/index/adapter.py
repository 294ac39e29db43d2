"""Feed documents (the data of feed-metadata events, the API's JSON) as index records: the
follower's way into the index."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import shapely

from registry_api.feeds.index.records import NOWHERE, FeedRecord


def record_from_document(document: Mapping[Any, Any]) -> FeedRecord:
    """A record from a feed document (an event's data or the API's JSON)."""
    gb = document.get("gb28181") or {}
    fov = document.get("fov")
    coverage = document.get("coverage")
    location = document.get("location")
    lon, lat = location["coordinates"][:2] if location else (NOWHERE, NOWHERE)
    return FeedRecord(
        id=document["id"],
        revision=int(document["revision"]),
        owner=document["owner"],
        kind=document["kind"],
        industry=gb.get("industry"),
        type_code=gb.get("type"),
        region=gb.get("region"),
        sharing=document["sharing"]["class"],
        status=document["status"],
        retired=bool(document.get("retired")),
        tags=tuple(document.get("tags") or ()),
        name=document["name"],
        lon=float(lon),
        lat=float(lat),
        fov=(float(fov["heading"]), float(fov["angle"]), float(fov["range_m"])) if fov else None,
        coverage=shapely.geometry.shape(coverage) if coverage else None,
    )
