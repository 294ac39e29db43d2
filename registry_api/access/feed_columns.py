"""The requested feeds as the policy's columns, read without touching most of their rows.

Owner, kind, sharing class and retired flag come from the feed index's columns (the process's
own writes at once, other replicas' through the feed-metadata follower). The written
conditions and legal basis, which only conditional and not-shared feeds need, come from
:class:`SharingRules`, a cache keyed by the feed's revision: any change of a feed gives it a
new revision, so a cached rule is never used past the change the index knows of. The database
is read only for what neither holds (a feed the index does not know yet, a rule not cached at
the index's revision), and whatever it answers for a feed decides that feed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.feed_views import feed_sharing
from registry_api.access.policy import FeedSharing
from registry_api.feeds.index.records import KIND_CODE, SHARING_CODE
from registry_api.feeds.models import Feed
from registry_api.feeds.spatial import FeedIndex

UNCONDITIONAL = SHARING_CODE["unconditional"]

RULE_LOOKUPS = Counter(
    "feedgrid_access_sharing_rule_lookups_total",
    "Feeds whose sharing rules (conditions, legal basis) an access request read, by source: "
    "the revision-keyed cache, or the database (cache misses, feeds the index does not know)",
    ["source"],
)


@dataclass(frozen=True)
class FeedColumns:
    """The policy's columns of the requested feeds, aligned with ``ids``.

    ``kind`` and ``sharing`` hold the codes of the index (``feeds.index.records``); ``rules``
    holds the policy's view of each feed whose decision may reach its written conditions or
    legal basis (None elsewhere). Where ``found`` is False nothing else means anything.
    """

    ids: list[str]
    found: np.ndarray  # bool
    owner: np.ndarray  # object: department code
    kind: np.ndarray  # int8
    sharing: np.ndarray  # int8
    retired: np.ndarray  # bool
    rules: np.ndarray  # object: FeedSharing or None

    def __len__(self) -> int:
        return len(self.ids)


class SharingRules:
    """Feed id -> (revision, the policy's view) of conditional and not-shared feeds, least
    recently used first out past ``limit``."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._rules: OrderedDict[str, tuple[int, FeedSharing]] = OrderedDict()

    def get(self, feed_id: str, revision: int) -> FeedSharing | None:
        known = self._rules.get(feed_id)
        if known is None or known[0] != revision:
            return None
        self._rules.move_to_end(feed_id)
        return known[1]

    def put(self, feed_id: str, revision: int, rules: FeedSharing) -> None:
        self._rules[feed_id] = (revision, rules)
        self._rules.move_to_end(feed_id)
        if len(self._rules) > self.limit:
            self._rules.popitem(last=False)

    def __len__(self) -> int:
        return len(self._rules)


RULE_COLUMNS = (
    Feed.id,
    Feed.revision,
    Feed.owner,
    Feed.kind,
    Feed.sharing_class,
    Feed.sharing,
    Feed.retired_at,
)


async def requested_feed_columns(
    session: AsyncSession,
    index: FeedIndex | None,
    rules: SharingRules,
    feed_ids: Sequence[str],
    requester_department: str,
) -> FeedColumns:
    """The columns of ``feed_ids`` (in that order) for a request by ``requester_department``."""
    ids = list(feed_ids)
    count = len(ids)
    if index is not None:
        known = index.attributes_of(ids)
        found, owner, kind = known.found, known.owner, known.kind
        sharing, retired, revision = known.sharing, known.retired, known.revision
    else:
        found, retired = np.zeros(count, dtype=bool), np.zeros(count, dtype=bool)
        owner = np.full(count, None, dtype=object)
        kind, sharing = np.full(count, -1, dtype=np.int8), np.full(count, -1, dtype=np.int8)
        revision = np.full(count, -1, dtype=np.int64)
    column_of_rules = np.full(count, None, dtype=object)
    # Only a decision that gets past the retired, own-department and unconditional checks
    # reads the written rules.
    needs_rules = found & ~retired & (sharing != UNCONDITIONAL) & (owner != requester_department)
    unread: list[int] = np.flatnonzero(~found).tolist()  # unknown to the index
    hits = 0
    for row in np.flatnonzero(needs_rules).tolist():
        cached = rules.get(ids[row], int(revision[row]))
        if cached is None:
            unread.append(row)
        else:
            column_of_rules[row] = cached
            hits += 1
    RULE_LOOKUPS.labels("cache").inc(hits)
    if unread:
        RULE_LOOKUPS.labels("database").inc(len(unread))
        rows = await _read_rows(session, [ids[row] for row in unread])
        for row in unread:
            stored = rows.get(ids[row])
            found[row] = stored is not None
            if stored is None:
                continue
            owner[row] = stored["owner"]
            kind[row] = KIND_CODE.get(stored["kind"], -1)
            sharing[row] = SHARING_CODE[stored["sharing_class"]]
            retired[row] = stored["retired_at"] is not None
            view = _view(stored)
            column_of_rules[row] = view
            if view.sharing_class.value != "unconditional":
                rules.put(ids[row], int(stored["revision"]), view)
    return FeedColumns(ids, found, owner, kind, sharing, retired, column_of_rules)


async def _read_rows(session: AsyncSession, feed_ids: list[str]) -> dict[str, dict[str, Any]]:
    result = await session.execute(select(*RULE_COLUMNS).where(Feed.id.in_(feed_ids)))
    return {row.id: dict(row._mapping) for row in result}


def _view(row: dict[str, Any]) -> FeedSharing:
    return feed_sharing(
        feed_id=row["id"],
        owner=row["owner"],
        kind=row["kind"],
        sharing_class=row["sharing_class"],
        sharing=row["sharing"] or {},
        retired=row["retired_at"] is not None,
    )
