"""What the streams read of a feed-metadata message: the few fields of the feed document that
enrich events and fill ``feed_metadata``'s columns (the whole document is kept as JSON there)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from schemas.events import CloudEvent
from schemas.gb28181 import InvalidGbCode, decode_gb28181


class FeedEventData(BaseModel):
    """The feed state carried by feed-metadata events (the registry's feed document).

    Only the fields the streams use are read and checked; the rest of the document (each is
    about 1.7 KB, and every worker's catalog reads every one) is skipped, not kept.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

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


class FeedFieldsEvent(CloudEvent):
    """A feed-metadata message with its data read as :class:`FeedEventData` in one pass."""

    data: FeedEventData  # type: ignore[assignment]


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


def point_of(location: dict[str, Any] | None) -> tuple[float | None, float | None]:
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
