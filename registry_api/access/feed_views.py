"""Reading feeds for access control: the policy's view of a feed, where the gateway serves it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import shapely.geometry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.policy import FeedSharing, SharingClass, SharingConditions
from registry_api.feeds.models import Feed


@dataclass(frozen=True)
class FeedFacts:
    """The columns of a feed that access control needs (never its internal stream URL)."""

    id: str
    owner: str
    kind: str
    sharing_class: str
    sharing: dict[str, Any]
    media_path: str
    stream_protocol: str
    retired_at: datetime | None


FEED_FACT_COLUMNS = (
    Feed.id,
    Feed.owner,
    Feed.kind,
    Feed.sharing_class,
    Feed.sharing,
    Feed.media_path,
    Feed.stream_protocol,
    Feed.retired_at,
)


async def load_feed_facts(session: AsyncSession, feed_ids: Iterable[str]) -> dict[str, FeedFacts]:
    ids = list(feed_ids)
    if not ids:
        return {}
    rows = (await session.execute(select(*FEED_FACT_COLUMNS).where(Feed.id.in_(ids)))).all()
    return {row.id: FeedFacts(*row) for row in rows}


def _limit(values: Any) -> frozenset[str] | None:
    """An empty or missing list in the conditions means no limit on that dimension."""
    if not values:
        return None
    return frozenset(str(value) for value in values)


def sharing_view(feed: FeedFacts) -> FeedSharing:
    conditions_doc = feed.sharing.get("conditions") or {}
    area_doc = conditions_doc.get("area")
    conditions = SharingConditions(
        departments=_limit(conditions_doc.get("departments")),
        purposes=_limit(conditions_doc.get("purposes")),
        actions=_limit(conditions_doc.get("actions")),
        max_duration_minutes=conditions_doc.get("max_duration_minutes"),
        area=shapely.geometry.shape(area_doc) if area_doc else None,
    )
    return FeedSharing(
        feed_id=feed.id,
        owner_department=feed.owner,
        feed_kind=feed.kind,
        sharing_class=SharingClass(feed.sharing_class),
        conditions=conditions,
        legal_basis=feed.sharing.get("legal_basis"),
        active=feed.retired_at is None,
    )


def gateway_path(media_gateway_app: str, media_path: str) -> str:
    """The path a feed has on the media gateway: ``<app>/<media path>``.

    RTMP and ZLMediaKit split it into app and stream name; MediaMTX takes it whole.
    """
    return f"{media_gateway_app}/{media_path}"


class FeedPathIndex:
    """Gateway path -> feed id, for naming the feed in a refused retrieval.

    Bounded; a miss is remembered for a minute so unknown paths cannot hammer the database.
    """

    MISS_SECONDS = 60.0

    def __init__(self, media_gateway_app: str, limit: int = 100_000) -> None:
        self.prefix = f"{media_gateway_app}/"
        self.limit = limit
        self._known: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def feed_id(self, session: AsyncSession, path: str) -> str | None:
        known = self._known.get(path)
        if known is not None and (known[0] is not None or known[1] > time.monotonic()):
            return known[0]
        found = None
        if path.startswith(self.prefix):
            found = await session.scalar(
                select(Feed.id)
                .where(Feed.media_path == path.removeprefix(self.prefix))
                .order_by(Feed.id)
                .limit(1)
            )
        self._known[path] = (found, time.monotonic() + self.MISS_SECONDS)
        if len(self._known) > self.limit:
            self._known.popitem(last=False)
        return found
