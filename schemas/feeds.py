"""Feeds as clients, importers and events see them.

The input shape is the demo-city bulk-import contract: a GeoJSON ``Feature`` with a ``Point``
geometry and the feed's properties. ``POST /v1/feeds`` takes the same properties with a
``location`` Point instead (or the Feature itself). Validation is strict (no "12" for 12, no
"yes" for true) and complete: a model that validates here is safe to store.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

import shapely
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from shapely.validation import explain_validity

from schemas.gb28181 import GbCode, InvalidGbCode, decode_gb28181
from schemas.identity import DEPARTMENT_CODE_PATTERN
from schemas.times import UtcTime

FeedKind = Literal["camera", "sensor"]
StreamProtocol = Literal["rtsp", "rtmp", "hls", "webrtc", "gb28181", "mqtt", "http"]
SharingClass = Literal["unconditional", "conditional", "not_shared"]
FeedStatus = Literal["online", "offline", "unknown"]
AccessAction = Literal["live", "playback", "snapshot", "ptz", "download", "read"]
Classification = Literal["basic", "theme", "department"]
SpatialRelation = Literal["within", "intersects"]

FEED_KINDS: tuple[str, ...] = ("camera", "sensor")
SHARING_CLASSES: tuple[str, ...] = ("unconditional", "conditional", "not_shared")
FEED_STATUSES: tuple[str, ...] = ("online", "offline", "unknown")

SENSOR_CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
MEDIA_PATH_PATTERN = r"^[A-Za-z0-9._/-]{1,256}$"
STREAM_URL_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@]*@?[^\s/?#@]+(?:[/?#][^\s]*)?$"
TAG_PATTERN = r"^[^,\s](?:[^,\x00-\x1f]{0,62}[^,\s])?$"
MAX_FOV_RANGE_M = 10_000.0
MAX_NEAR_METRES = 20_000.0
_SENSOR_CODE = re.compile(SENSOR_CODE_PATTERN)

DepartmentCode = Annotated[str, Field(pattern=DEPARTMENT_CODE_PATTERN)]
Coordinate = Annotated[float, Field(allow_inf_nan=False)]
Position = Annotated[list[Coordinate], Field(min_length=2, max_length=3)]
Ring = Annotated[list[Position], Field(min_length=4)]

_STRICT = ConfigDict(extra="forbid", strict=True)


def check_lon_lat(lon: float, lat: float) -> None:
    if not -180.0 <= lon <= 180.0:
        raise ValueError(f"longitude {lon} is outside -180..180")
    if not -90.0 <= lat <= 90.0:
        raise ValueError(f"latitude {lat} is outside -90..90")


# ---------------------------------------------------------------------------- geometries


class PointGeometry(BaseModel):
    """A GeoJSON Point in WGS84 lon/lat (RFC 7946); a third (altitude) value is ignored."""

    model_config = _STRICT

    type: Literal["Point"]
    coordinates: Position

    @field_validator("coordinates")
    @classmethod
    def _in_range(cls, position: list[float]) -> list[float]:
        check_lon_lat(position[0], position[1])
        return position[:2]

    @property
    def lon(self) -> float:
        return self.coordinates[0]

    @property
    def lat(self) -> float:
        return self.coordinates[1]


def _polygon_from_rings(rings: list[list[list[float]]]) -> shapely.Polygon:
    for ring in rings:
        if ring[0][:2] != ring[-1][:2]:
            raise ValueError("a polygon ring must end at its first position (closed)")
        for position in ring:
            check_lon_lat(position[0], position[1])
    shell = [position[:2] for position in rings[0]]
    holes = [[position[:2] for position in ring] for ring in rings[1:]]
    polygon = shapely.Polygon(shell, holes)
    min_lon, _, max_lon, _ = polygon.bounds
    if max_lon - min_lon > 180.0:
        raise ValueError("polygons wider than 180 degrees of longitude are not supported")
    if not polygon.is_valid:
        raise ValueError(f"the polygon is not valid: {explain_validity(polygon)}")
    if polygon.area == 0:
        raise ValueError("the polygon has no area")
    return polygon


def _check_vertex_cap(count: int, cap: int) -> None:
    if count > cap:
        raise ValueError(f"the geometry has {count} vertices; at most {cap} are allowed")


class PolygonGeometry(BaseModel):
    """A GeoJSON Polygon: closed rings, no self-intersection, at most ``MAX_VERTICES``."""

    model_config = _STRICT
    MAX_VERTICES: ClassVar[int] = 1_000

    type: Literal["Polygon"]
    coordinates: Annotated[list[Ring], Field(min_length=1, max_length=100)]

    @model_validator(mode="after")
    def _valid_polygon(self) -> PolygonGeometry:
        _check_vertex_cap(sum(len(ring) for ring in self.coordinates), self.MAX_VERTICES)
        self.__dict__["to_shapely"] = _polygon_from_rings(self.coordinates)
        return self

    @cached_property
    def to_shapely(self) -> shapely.Geometry:
        """The polygon as a Shapely geometry (built once, during validation)."""
        return _polygon_from_rings(self.coordinates)


class SearchPolygon(PolygonGeometry):
    """A search area (a district, a road buffer): up to 10,000 vertices."""

    MAX_VERTICES: ClassVar[int] = 10_000


class SearchMultiPolygon(BaseModel):
    model_config = _STRICT
    MAX_VERTICES: ClassVar[int] = 10_000

    type: Literal["MultiPolygon"]
    coordinates: Annotated[list[Annotated[list[Ring], Field(min_length=1)]], Field(min_length=1)]

    @model_validator(mode="after")
    def _valid_multipolygon(self) -> SearchMultiPolygon:
        _check_vertex_cap(
            sum(len(ring) for polygon in self.coordinates for ring in polygon), self.MAX_VERTICES
        )
        self.__dict__["to_shapely"] = self._build()
        return self

    def _build(self) -> shapely.MultiPolygon:
        shape = shapely.MultiPolygon([_polygon_from_rings(rings) for rings in self.coordinates])
        if not shape.is_valid:
            raise ValueError(f"the multipolygon is not valid: {explain_validity(shape)}")
        return shape

    @cached_property
    def to_shapely(self) -> shapely.Geometry:
        return self._build()


SearchGeometry = Annotated[SearchPolygon | SearchMultiPolygon, Field(discriminator="type")]


# ---------------------------------------------------------------------------- feed parts


class FieldOfView(BaseModel):
    """Where a camera looks: compass heading of the view's centre, its width and its reach."""

    model_config = _STRICT

    heading: float = Field(
        ge=0, lt=360, allow_inf_nan=False, description="Degrees clockwise from north"
    )
    angle: float = Field(
        ge=1, le=360, allow_inf_nan=False, description="Width of the view in degrees"
    )
    range_m: float = Field(
        gt=0, le=MAX_FOV_RANGE_M, allow_inf_nan=False, description="Reach in metres"
    )


class StreamEndpoint(BaseModel):
    model_config = _STRICT

    protocol: StreamProtocol
    url: str = Field(
        max_length=2048,
        pattern=STREAM_URL_PATTERN,
        description="Internal URL (scheme://host...): only the owner and the city admin see it",
    )
    media_path: str = Field(pattern=MEDIA_PATH_PATTERN, description="Path on the media gateway")

    @field_validator("media_path")
    @classmethod
    def _no_parent_segments(cls, path: str) -> str:
        if path.startswith("/") or "/../" in f"/{path}/":
            raise ValueError("the media path may not start with '/' or contain '..'")
        return path


class Datastream(BaseModel):
    """One observed property of a sensor (OGC SensorThings Datastream)."""

    model_config = _STRICT

    name: str = Field(min_length=1, max_length=100)
    observed_property: str = Field(min_length=1, max_length=200)
    unit: str = Field(min_length=1, max_length=50)


class CatalogEntry(BaseModel):
    """Core catalog metadata of the national guideline (GB/T 21063 references)."""

    model_config = _STRICT

    resource_name: str = Field(min_length=1, max_length=300)
    resource_code: str = Field(min_length=1, max_length=100)
    abstract: str = Field("", max_length=4000)
    format: str = Field("", max_length=100)
    classification: Classification
    update_cycle: str = Field("", max_length=50)
    open_to_public: bool = False
    publish_date: Annotated[date | None, Field(strict=False)] = None
    related_codes: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=100
    )


class SharingConditions(BaseModel):
    """What a conditional entry allows; an empty list means no limit on that dimension."""

    model_config = _STRICT

    departments: list[DepartmentCode] = Field(default_factory=list, max_length=200)
    purposes: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50
    )
    actions: list[AccessAction] = Field(default_factory=list, max_length=6)
    max_duration_minutes: int | None = Field(None, ge=1, le=525_600)
    area: PolygonGeometry | None = None


class Sharing(BaseModel):
    """The sharing class of the entry (national rule), its conditions and legal basis."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    sharing_class: SharingClass = Field(alias="class")
    conditions: SharingConditions | None = None
    legal_basis: str | None = Field(None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _class_rules(self) -> Sharing:
        if self.sharing_class == "not_shared" and not self.legal_basis:
            raise ValueError("a not_shared entry must cite its legal basis")
        if self.sharing_class != "conditional" and self.conditions is not None:
            raise ValueError(f"conditions belong to conditional entries, not {self.sharing_class}")
        return self


Tag_ = Annotated[str, Field(pattern=TAG_PATTERN)]


class FeedProperties(BaseModel):
    """A feed's properties as the bulk import and the API take them."""

    model_config = _STRICT

    kind: FeedKind
    code: str = Field(
        min_length=1,
        max_length=64,
        description="Cameras: a GB/T 28181 20-digit code. Sensors: the department's own code.",
    )
    owner: DepartmentCode
    name: str = Field(min_length=1, max_length=200)
    altitude: float | None = Field(None, ge=-500, le=9000, allow_inf_nan=False)
    fov: FieldOfView | None = None
    coverage: PolygonGeometry | None = None
    stream: StreamEndpoint
    datastreams: list[Datastream] = Field(default_factory=list, max_length=100)
    catalog: CatalogEntry | None = None
    sharing: Sharing
    tags: list[Tag_] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _kind_rules(self) -> FeedProperties:
        if self.kind == "camera":
            try:
                decode_gb28181(self.code)
            except InvalidGbCode as error:
                raise ValueError(f"invalid GB/T 28181 code: {error}") from None
            if self.datastreams:
                raise ValueError("datastreams belong to sensors, not cameras")
        else:
            if not _SENSOR_CODE.match(self.code):
                raise ValueError(f"a sensor code must match {SENSOR_CODE_PATTERN}")
            if self.fov is not None or self.coverage is not None:
                raise ValueError("fov and coverage belong to cameras, not sensors")
            if not self.datastreams:
                raise ValueError("a sensor needs at least one datastream")
        if len(set(self.tags)) != len(self.tags):
            raise ValueError("tags must be unique")
        return self

    @property
    def gb(self) -> GbCode | None:
        return decode_gb28181(self.code) if self.kind == "camera" else None


class FeedCreate(FeedProperties):
    """Body of ``POST /v1/feeds``: the properties plus the location (null or left out: an
    unplaced feed, listed for its department to locate and kept off maps and spatial answers)."""

    location: PointGeometry | None = None


class FeedFeature(BaseModel):
    """One GeoJSON Feature of the bulk-import format. Foreign members are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["Feature"]
    geometry: PointGeometry
    properties: FeedProperties


def _body_form(value: Any) -> str:
    if isinstance(value, dict):
        return "feature" if value.get("type") == "Feature" else "object"
    return "feature" if getattr(value, "type", None) == "Feature" else "object"


FeedCreateBody = Annotated[
    Annotated[FeedCreate, Tag("object")] | Annotated[FeedFeature, Tag("feature")],
    Discriminator(_body_form),
]


# ---------------------------------------------------------------------------- outputs


class GbCodeOut(BaseModel):
    region: str
    industry: str
    industry_label: str
    type: str
    type_label: str
    network: str
    network_label: str
    serial: str


class StreamOut(BaseModel):
    protocol: StreamProtocol
    media_path: str
    url: str | None = Field(
        None, description="Present only for the owner department's users and the city admin"
    )


class SharingOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    sharing_class: SharingClass = Field(alias="class")
    conditions: dict[str, Any] | None = None
    legal_basis: str | None = None


class FeedOut(BaseModel):
    """A feed as the API shows it. Other departments never see ``stream.url``."""

    id: str
    kind: FeedKind
    code: str
    owner: str
    name: str
    location: dict[str, Any] | None = Field(
        description="GeoJSON Point; null for an unplaced feed (no coordinates yet)"
    )
    altitude: float | None
    fov: FieldOfView | None
    fov_polygon: dict[str, Any] | None = Field(description="The field of view as a GeoJSON Polygon")
    coverage: dict[str, Any] | None
    gb28181: GbCodeOut | None
    stream: StreamOut
    datastreams: list[Datastream]
    catalog: dict[str, Any] | None
    sharing: SharingOut
    tags: list[str]
    status: FeedStatus
    last_seen: datetime | None
    version: int
    revision: int = Field(description="Counts every change, status changes included")
    created_at: datetime
    updated_at: datetime
    retired: bool
    retired_at: datetime | None
    distance_m: float | None = Field(None, description="Only for `near` searches")
    duplicates: list[dict[str, Any]] | None = Field(
        None, description="On registration: feeds of other departments this one seems to duplicate"
    )


class FeedPage(BaseModel):
    items: list[FeedOut]
    total: int = Field(description="How many feeds match in all")
    next_cursor: str | None


class BulkReject(BaseModel):
    index: int
    code: str | None
    message: str


class BulkFlag(BaseModel):
    index: int
    code: str
    feed_id: str
    duplicates: list[dict[str, Any]]


class BulkResult(BaseModel):
    created: int
    updated: int
    unchanged: int
    rejected: list[BulkReject]
    flagged: list[BulkFlag] = Field(
        default_factory=list, description="Stored, but the code is registered by another department"
    )


# ---------------------------------------------------------------------------- queries


def _split_numbers(value: Any, count: int, name: str) -> Any:
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) != count:
            raise ValueError(f"{name} takes {count} comma-separated numbers")
        try:
            return [float(part) for part in parts]
        except ValueError:
            raise ValueError(f"{name} takes {count} comma-separated numbers") from None
    return value


class BBox(BaseModel):
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


class Near(BaseModel):
    lon: float
    lat: float
    metres: float


class LonLat(BaseModel):
    lon: float
    lat: float


class FeedFilters(BaseModel):
    """Filters of ``GET /v1/feeds`` and ``POST /v1/feeds/search`` (all of them combine with AND)."""

    model_config = ConfigDict(extra="forbid")

    department: DepartmentCode | None = Field(None, description="Owner department code")
    kind: FeedKind | None = None
    industry: str | None = Field(None, pattern=r"^\d{2}$", description="GB/T 28181 digits 9-10")
    type_code: str | None = Field(None, pattern=r"^\d{3}$", description="GB/T 28181 digits 11-13")
    region: str | None = Field(
        None, pattern=r"^\d{2,8}$", description="Administrative-code prefix, e.g. 6201 or 620102"
    )
    sharing: SharingClass | None = None
    status: FeedStatus | None = None
    tag: str | None = Field(None, pattern=TAG_PATTERN)
    q: str | None = Field(None, min_length=1, max_length=100, description="Text in the name")
    bbox: BBox | None = Field(None, description="minLon,minLat,maxLon,maxLat")
    near: Near | None = Field(None, description="lon,lat,metres: true distance, nearest first")
    sees: LonLat | None = Field(None, description="lon,lat: cameras whose FOV or coverage holds it")
    include_retired: bool = False
    placed: bool | None = Field(
        None, description="false: only unplaced feeds (no coordinates); true: only placed ones"
    )
    catalog_node: str | None = Field(
        None,
        pattern=r"^\d{20}$",
        description="GB/T 28181 id of a catalog-tree node: feeds of the channels beneath it",
    )

    @field_validator("bbox", mode="before")
    @classmethod
    def _parse_bbox(cls, value: Any) -> Any:
        value = _split_numbers(value, 4, "bbox")
        if isinstance(value, list | tuple):
            if len(value) != 4:
                raise ValueError("bbox takes 4 numbers")
            return dict(zip(("min_lon", "min_lat", "max_lon", "max_lat"), value, strict=True))
        return value

    @field_validator("near", mode="before")
    @classmethod
    def _parse_near(cls, value: Any) -> Any:
        value = _split_numbers(value, 3, "near")
        if isinstance(value, list | tuple):
            if len(value) != 3:
                raise ValueError("near takes lon,lat,metres")
            return dict(zip(("lon", "lat", "metres"), value, strict=True))
        return value

    @field_validator("sees", mode="before")
    @classmethod
    def _parse_sees(cls, value: Any) -> Any:
        value = _split_numbers(value, 2, "sees")
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise ValueError("sees takes lon,lat")
            return dict(zip(("lon", "lat"), value, strict=True))
        return value

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, bbox: BBox | None) -> BBox | None:
        if bbox is not None:
            check_lon_lat(bbox.min_lon, bbox.min_lat)
            check_lon_lat(bbox.max_lon, bbox.max_lat)
            if bbox.min_lon > bbox.max_lon or bbox.min_lat > bbox.max_lat:
                raise ValueError("bbox minimum must not exceed its maximum")
        return bbox

    @field_validator("near")
    @classmethod
    def _check_near(cls, near: Near | None) -> Near | None:
        if near is not None:
            check_lon_lat(near.lon, near.lat)
            if not 0 < near.metres <= MAX_NEAR_METRES:
                raise ValueError(f"near distance must be in (0, {MAX_NEAR_METRES:.0f}] metres")
        return near

    @field_validator("sees")
    @classmethod
    def _check_sees(cls, sees: LonLat | None) -> LonLat | None:
        if sees is not None:
            check_lon_lat(sees.lon, sees.lat)
        return sees


class FeedPageQuery(FeedFilters):
    """The query string of ``GET /v1/feeds``: the filters and the page wanted."""

    limit: int = Field(100, ge=1, le=1000, description="Feeds on a page")
    cursor: str | None = Field(
        None, max_length=500, description="``next_cursor`` of the page before"
    )


class FeedSearch(FeedPageQuery):
    """Body of ``POST /v1/feeds/search``: the list filters plus a GeoJSON area."""

    geometry: SearchGeometry | None = None
    relation: SpatialRelation = Field(
        "intersects",
        description=(
            "within: the feed's location lies in the area (boundary included); intersects: the "
            "feed's location, field of view or coverage touches the area"
        ),
    )


# ---------------------------------------------------------------------------- duplicates


class DuplicateMember(BaseModel):
    id: str
    owner: str
    kind: FeedKind
    code: str
    name: str
    location: dict[str, Any] | None


class DuplicateGroup(BaseModel):
    key: str = Field(description="Names this group (its reason and members) to resolve it")
    reason: Literal["same_code", "same_stream_url", "nearby_overlapping_view"]
    feeds: list[DuplicateMember]
    departments: list[str]
    evidence: dict[str, Any]


class DuplicateReport(BaseModel):
    groups: list[DuplicateGroup]
    total: int
    next_cursor: str | None


# ---------------------------------------------------------------------------- heartbeats


class HeartbeatItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feed_id: str = Field(min_length=1, max_length=64)
    status: Literal["online", "offline"] = "online"
    seen_at: UtcTime | None = Field(None, description="When the device was seen; default now")


class HeartbeatBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[HeartbeatItem] = Field(min_length=1, max_length=20_000)
    reporter: str | None = Field(None, max_length=200, description="Gateway or device reporting")


class HeartbeatReject(BaseModel):
    index: int
    feed_id: str
    message: str


class HeartbeatResult(BaseModel):
    accepted: int = Field(description="Reports passed on to the stream workers")
    status_changed: int = Field(
        description="Always 0: the workers decide transitions and the registry applies them"
    )
    rejected: list[HeartbeatReject]
