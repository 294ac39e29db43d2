"""Reading feeds for access control: the policy's view of a feed, where the gateway serves it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import shapely.geometry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
    return feed_sharing(
        feed_id=feed.id,
        owner=feed.owner,
        kind=feed.kind,
        sharing_class=feed.sharing_class,
        sharing=feed.sharing,
        retired=feed.retired_at is not None,
    )


def feed_sharing(
    *,
    feed_id: str,
    owner: str,
    kind: str,
    sharing_class: str,
    sharing: dict[str, Any],
    retired: bool,
) -> FeedSharing:
    """The policy's view of a feed from its columns and its sharing document."""
    conditions_doc = sharing.get("conditions") or {}
    area_doc = conditions_doc.get("area")
    conditions = SharingConditions(
        departments=_limit(conditions_doc.get("departments")),
        purposes=_limit(conditions_doc.get("purposes")),
        actions=_limit(conditions_doc.get("actions")),
        max_duration_minutes=conditions_doc.get("max_duration_minutes"),
        area=shapely.geometry.shape(area_doc) if area_doc else None,
    )
    return FeedSharing(
        feed_id=feed_id,
        owner_department=owner,
        feed_kind=kind,
        sharing_class=SharingClass(sharing_class),
        conditions=conditions,
        legal_basis=sharing.get("legal_basis"),
        active=not retired,
    )


def gateway_path(media_gateway_app: str, media_path: str) -> str:
    """The path a feed has on the media gateway: ``<app>/<media path>``.

    RTMP and ZLMediaKit split it into app and stream name; MediaMTX takes it whole.
    """
    return f"{media_gateway_app}/{media_path}"


class FeedRevisions(Protocol):
    """What the location cache needs of the process's feed index (which follows every write,
    this replica's and, through the feed-metadata follower, every other one's)."""

    changes: int

    def revision_of(self, feed_id: str) -> int | None: ...


@dataclass(frozen=True)
class FeedLocation:
    """Where a feed is served now, and whose it is."""

    id: str
    owner: str
    gateway_path: str
    revision: int
    active: bool


class FeedLocations:
    """Feed id -> where it is served, and gateway path -> the active feed served there.

    Both caches are keyed by the feed's revision as the feed index knows it: any change of a
    feed (moved, retired, status) gives it a new revision, on every replica, and its cached
    location is read again. A path known to serve nothing is remembered only while no feed
    changes anywhere (and at most a minute), so a feed moved onto it is found at once, and
    unknown paths still cannot hammer the database.
    """

    MISS_SECONDS = 60.0

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        media_gateway_app: str,
        revisions: FeedRevisions,
        limit: int = 100_000,
    ) -> None:
        self.sessions = sessions
        self.media_gateway_app = media_gateway_app
        self.prefix = f"{media_gateway_app}/"
        self.revisions = revisions
        self.limit = limit
        self._feeds: OrderedDict[str, FeedLocation] = OrderedDict()
        self._paths: OrderedDict[str, FeedLocation] = OrderedDict()
        self._misses: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def _current(self, location: FeedLocation | None) -> bool:
        return location is not None and (
            self.revisions.revision_of(location.id) == location.revision
        )

    async def of_feed(self, feed_id: str) -> FeedLocation | None:
        """Where the feed is now (retired ones included, marked inactive); None if unknown."""
        known = self._feeds.get(feed_id)
        if known is not None and self._current(known):
            return known
        async with self.sessions() as session:
            query = select(*LOCATION_COLUMNS).where(Feed.id == feed_id)
            row = (await session.execute(query)).first()
        if row is None:
            return None
        location = self._location(row)
        _remember(self._feeds, feed_id, location, self.limit)
        return location

    async def at_path(self, path: str) -> FeedLocation | None:
        """The active feed served at a gateway path: the one changed last if several are."""
        known = self._paths.get(path)
        if known is not None and self._current(known):
            return known
        miss = self._misses.get(path)
        if miss is not None and miss[0] == self.revisions.changes and miss[1] > time.monotonic():
            return None
        found = None
        if path.startswith(self.prefix):
            query = (
                select(*LOCATION_COLUMNS)
                .where(Feed.media_path == path.removeprefix(self.prefix), Feed.retired_at.is_(None))
                .order_by(Feed.updated_at.desc(), Feed.id.desc())
                .limit(1)
            )
            async with self.sessions() as session:
                row = (await session.execute(query)).first()
            found = None if row is None else self._location(row)
        self._paths.pop(path, None)
        self._misses.pop(path, None)
        if found is None:
            _remember(
                self._misses,
                path,
                (self.revisions.changes, time.monotonic() + self.MISS_SECONDS),
                self.limit,
            )
        else:
            _remember(self._paths, path, found, self.limit)
        return found

    def _location(self, row: Any) -> FeedLocation:
        return FeedLocation(
            id=row.id,
            owner=row.owner,
            gateway_path=gateway_path(self.media_gateway_app, row.media_path),
            revision=row.revision,
            active=row.retired_at is None,
        )


LOCATION_COLUMNS = (Feed.id, Feed.owner, Feed.media_path, Feed.revision, Feed.retired_at)

CachedT = TypeVar("CachedT")


def _remember(cache: OrderedDict[str, CachedT], key: str, value: CachedT, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > limit:
        cache.popitem(last=False)
