"""GB/T 28181 catalogs as the API answers about them: imports, the tree, the shared catalog,
duplicate decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CatalogSharing = Literal["unconditional", "conditional", "not_shared"]


class CatalogItemProblem(BaseModel):
    index: int = Field(description="Position of the item in the answer (all its messages)")
    device_id: str | None
    message: str


class CatalogChannelCounts(BaseModel):
    created: int
    updated: int
    unchanged: int
    retired: int = Field(description="Channels a complete catalog no longer lists, or DEL events")
    revived: int = Field(description="Retired channels that reappeared")
    unplaced: int = Field(description="Channels written without coordinates")


class CatalogLiveness(BaseModel):
    reported: int = Field(description="Status reports handed to the liveness workers")
    error: str | None = Field(
        None, description="Why the reports could not be handed over (the catalog is stored)"
    )


class CatalogImportResult(BaseModel):
    state: Literal["applied", "waiting"] = Field(
        description="waiting: a part of an answer (SN) that is not complete yet; nothing applied"
    )
    kind: Literal["Response", "Notify"]
    department: str
    platform: str = Field(description="DeviceID of the platform that answered")
    sn: str
    sum_num: int | None
    received: int = Field(description="Items of this SN received so far")
    complete: bool = Field(description="A complete answer: absent channels were retired")
    channels: CatalogChannelCounts
    nodes_written: int
    nodes_retired: int
    rejected: list[CatalogItemProblem]
    skipped: list[CatalogItemProblem] = Field(description="Items that are not feeds nor tree nodes")
    liveness: CatalogLiveness


class CatalogNodeOut(BaseModel):
    id: str = Field(description="GB/T 28181 id")
    kind: Literal["platform", "business_group", "virtual_organisation", "device", "channel"]
    name: str
    department: str
    feed_id: str | None = None
    channels: int = Field(description="Live channels directly beneath")
    children: list[CatalogNodeOut] = Field(default_factory=list)


class CatalogTree(BaseModel):
    roots: list[CatalogNodeOut]
    nodes: int


class UnplacedSummary(BaseModel):
    department: str
    feeds: int = Field(description="Live feeds of the department")
    unplaced: int = Field(description="Live feeds without coordinates: they need a location")
    catalog_nodes: int
    platforms: list[str]


class SharedCatalogPage(BaseModel):
    """The GeoJSON form of the shared catalog (one page)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["FeatureCollection"]
    platform: str
    sum_num: int
    page: int
    pages: int
    features: list[dict[str, object]]


class DuplicateDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    authoritative_feed_id: str | None = Field(
        None, max_length=64, description="resolve: the feed that is the one source"
    )
    note: str | None = Field(None, max_length=1000)


class DuplicateDecisionOut(BaseModel):
    group_key: str
    reason: str
    decision: Literal["resolved", "dismissed"]
    authoritative_feed_id: str | None
    feed_ids: list[str]
    note: str | None
    decided_by: str
    decided_department: str | None
    decided_at: datetime


class DuplicateDecisionPage(BaseModel):
    items: list[DuplicateDecisionOut]
