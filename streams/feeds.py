"""What the agents know about a feed: the slice of its metadata used to enrich events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from schemas.events import CloudEvent
from schemas.gb28181 import InvalidGbCode, decode_gb28181
from streams.dead_letter import InvalidMessage


class FeedEventData(BaseModel):
    """The feed state carried by feed-metadata events (the registry's feed document).

    Only the fields the streams use are read; the rest of the document is kept verbatim in
    ClickHouse (``feed_metadata.document``).
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(min_length=1, validation_alias=AliasChoices("id", "feed_id"))
    version: int = Field(0, ge=0)
    revision: int = Field(0, ge=0, description="Counts every change, status changes included")
    kind: str = ""
    code: str = ""
    owner: str = Field("", validation_alias=AliasChoices("owner", "owner_department"))
    name: str = ""
    status: str = "unknown"
    retired: bool = False
    region: str | None = None
    location: dict[str, Any] | None = None
    gb28181: dict[str, Any] | None = None
    sharing: dict[str, Any] | None = None
    created_at: datetime | None = None

    @property
    def state_version(self) -> int:
        """Orders the feed's states: its revision, or its content version where that is higher."""
        return max(self.revision, self.version)


class FeedEventFields(FeedEventData):
    """:class:`FeedEventData` validated the same way, without keeping the rest of the
    document: the feed catalog reads every feed-metadata message (each carries the whole
    feed document, about 1.7 KB) and needs six of its fields."""

    model_config = ConfigDict(extra="ignore")  # the aliases as FeedEventData's


class FeedFieldsEvent(CloudEvent):
    """A feed-metadata message with its data read as :class:`FeedEventFields` in one pass."""

    data: FeedEventFields  # type: ignore[assignment]


class FeedSnapshot(BaseModel):
    """The enrichment record kept per feed in the agents' feed table.

    ``version`` orders every state of the feed: the registry's revision (which also counts
    status changes), or its content version when the event has no revision.
    """

    feed_id: str
    version: int
    owner_department: str
    kind: str
    region: str
    industry: str
    sharing_class: str
    status: str
    retired: bool
    name: str
    longitude: float | None
    latitude: float | None
    device_code: str
    registered_at: datetime | None


def _gb_parts(data: FeedEventData) -> tuple[str, str]:
    """(district region code, industry) from the GB/T 28181 code, when the feed has one."""
    if data.gb28181 and data.gb28181.get("region"):
        return str(data.gb28181["region"])[:6], str(data.gb28181.get("industry") or "")
    if data.kind == "camera" and data.code:
        try:
            decoded = decode_gb28181(data.code)
        except InvalidGbCode:
            return "", ""
        return decoded.region[:6], decoded.industry
    return "", ""


def _point(location: dict[str, Any] | None) -> tuple[float | None, float | None]:
    if not location:
        return None, None
    coordinates = location.get("coordinates")
    if isinstance(coordinates, list) and len(coordinates) >= 2:
        try:
            return float(coordinates[0]), float(coordinates[1])
        except (TypeError, ValueError):
            return None, None
    return None, None


def region_and_industry(data: FeedEventData) -> tuple[str, str]:
    """The feed's district region code (its own, else its GB/T 28181 code's) and industry."""
    region, industry = _gb_parts(data)
    return data.region or region, industry


def sharing_class_of(data: FeedEventData) -> str:
    sharing = data.sharing or {}
    return str(sharing.get("class") or sharing.get("sharing_class") or "")


def snapshot_from_event(event: CloudEvent) -> tuple[FeedSnapshot, FeedEventData]:
    try:
        data = FeedEventData.model_validate(event.data)
    except ValidationError as error:
        raise InvalidMessage(f"invalid feed data: {_first_error(error)}") from None
    region, industry = region_and_industry(data)
    longitude, latitude = _point(data.location)
    snapshot = FeedSnapshot(
        feed_id=data.id,
        version=data.state_version,
        owner_department=data.owner,
        kind=data.kind,
        region=region,
        industry=industry,
        sharing_class=sharing_class_of(data),
        status=data.status,
        retired=data.retired or event.type == "feedgrid.feed.retired",
        name=data.name,
        longitude=longitude,
        latitude=latitude,
        device_code=data.code,
        registered_at=data.created_at,
    )
    return snapshot, data


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item["loc"]) or "data"
    return f"{where}: {item['msg']}"
