"""The in-memory feed index: every list and spatial search of the API process answers from it.

Design (1,000,000 feeds take about 320 MB of arrays and names):

* A :class:`Snapshot` is columnar: numpy arrays of the searchable attributes (owner, kind,
  GB/T 28181 parts, sharing class, status, retired flag, tags, lower-cased name, position,
  field of view) sorted by feed id, so the lowest matching rows are the first page. Each
  categorical attribute is also kept sorted (rows grouped by value), so a filtered list starts
  from the rarest value asked for instead of scanning every row; the groups are sorted in a
  worker thread after a new snapshot goes live (meanwhile filters scan, slower but exact).
* Positions are bucketed in a sorted-cell grid (0.01 degree cells, key = row * columns + column,
  keys sorted): a search box becomes one ``searchsorted`` range per grid row.
* Fields of view and coverage polygons ("footprints") are registered in every grid cell their
  bounds touch (huge ones in an always-checked list). ``sees`` looks up one cell, checks the
  bounds, then tests the exact polygons with Shapely. FOV polygons are not kept: they are
  rebuilt for the few candidates from (position, heading, angle, range) by the same function
  the API uses to show them, so index and brute force agree exactly.
* Distances are true geodesics (pyproj); the grid only preselects with a padded box.

Consistency: the :class:`FeedIndex` holds an immutable base snapshot plus a small delta of
records written since. Writers call :meth:`FeedIndex.apply` right after their commit, so this
process sees its own writes at once; when the delta grows it is merged into a new base in a
worker thread and swapped in. Records carry the feed's ``revision``, and an older revision
never replaces a newer one, whatever order updates arrive in.

Scale mode (N API replicas): each replica loads the index from the database at start and then
follows the ``feed-metadata`` topic (compacted, keyed by feed id, full state + revision in
every event) from just before the load began (``registry_api/feeds/follower.py``): every
replica converges on the same state within the relay's latency, and the revision rule makes
replays and the overlap between the database load and the topic harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.feeds.geodesy import (
    LOCAL_DISTANCE_SLACK_M,
    LOCAL_DISTANCE_TOLERANCE,
    geodesic_distance_m,
    local_distance_error_m,
)
from registry_api.feeds.index.adapter import record_from_document
from registry_api.feeds.index.columns import Columns, gather_columns
from registry_api.feeds.index.loader import load_snapshot
from registry_api.feeds.index.lookup import FeedAttributes, attributes_of
from registry_api.feeds.index.queries import (
    IndexPage,
    IndexQuery,
    InvalidCursor,
    Matches,
    decode_cursor,
    encode_cursor,
)
from registry_api.feeds.index.records import FeedRecord, Vocabulary
from registry_api.feeds.index.snapshot import (
    Snapshot,
    is_sorted,
    merge_columns_dropping,
    merge_snapshot,
)
from registry_api.feeds.rendered import (
    RenderedFeeds,
    Staged,
    render_documents,
    render_rows,
    status_changed,
)

log = logging.getLogger("feedgrid.feeds.index")

DELTA_LIMIT = 2_000
REVISIONS_REMEMBERED = 100_000

# ---------------------------------------------------------------------------- the index


# Snapshots the delta is searched in, at most, before a read merges them into one.
DELTA_PARTS = 4


@dataclass
class _Delta:
    """The records written since the base was built, and the snapshots reads search them in.

    Each read after writes builds the records written since (``unbuilt``) into a snapshot of
    their own, a part, and marks their rows in the older parts as superseded; past
    ``DELTA_PARTS`` parts, it joins their rows not superseded into one snapshot (each feed
    once, at its newest revision). A record's columns are built once. Rebuilt whole after
    every write, as it was, the delta's snapshot cost the first read after each write up to
    ``DELTA_LIMIT`` records' columns: while 56,000 feeds came online in writes of 250, a sixth
    of every access request's time."""

    records: dict[str, FeedRecord] = field(default_factory=dict)
    parts: list[tuple[Snapshot, np.ndarray]] = field(default_factory=list)  # rows superseded
    unbuilt: dict[str, FeedRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unbuilt = dict(self.records)

    def wrote(self, records: Sequence[FeedRecord]) -> None:
        """``records`` (already in ``records``) were written."""
        for record in records:
            self.unbuilt[record.id] = record

    def snapshots(self, owners: Vocabulary, tags: Vocabulary) -> list[tuple[Snapshot, np.ndarray]]:
        """The delta's snapshots to search, each with its rows superseded by a later part."""
        if self.unbuilt:
            part = Snapshot(Columns.from_records(list(self.unbuilt.values()), owners, tags))
            ids = list(self.unbuilt)
            for snapshot, superseded in self.parts:
                superseded[snapshot.rows_of(ids)] = True
            self.parts.append((part, np.zeros(part.size, dtype=bool)))
            self.unbuilt = {}
            if len(self.parts) > DELTA_PARTS:
                # every part's rows not superseded: each feed once, at its newest revision
                live = [
                    snapshot.columns.take(np.flatnonzero(~superseded))
                    for snapshot, superseded in self.parts
                ]
                merged = Snapshot(Columns.concat_all(live))
                self.parts = [(merged, np.zeros(merged.size, dtype=bool))]
        return self.parts


@dataclass
class _TrueDistances:
    """Which of a near page's candidate distances are true geodesics, and the positions to
    compute the others from (``Matches.exact``)."""

    centre: tuple[float, float]
    exact: np.ndarray
    lon: np.ndarray | None = None  # of the candidates, when some distances are local
    lat: np.ndarray | None = None

    @classmethod
    def of(
        cls, found: list[tuple[Snapshot, Matches]], centre: tuple[float, float]
    ) -> _TrueDistances:
        size = sum(matches.rows.shape[0] for _, matches in found)
        if all(matches.exact is None or matches.exact.all() for _, matches in found):
            return cls(centre, np.ones(size, dtype=bool))
        exact = np.concatenate(
            [
                np.ones(matches.rows.shape[0], dtype=bool)
                if matches.exact is None
                else matches.exact
                for _, matches in found
            ]
        )
        lon = np.concatenate([snapshot.columns.lon[matches.rows] for snapshot, matches in found])
        lat = np.concatenate([snapshot.columns.lat[matches.rows] for snapshot, matches in found])
        return cls(centre, exact, lon, lat)

    @property
    def all(self) -> bool:
        return self.lon is None or bool(self.exact.all())

    def make(self, distances: np.ndarray, wanted: np.ndarray) -> None:
        """Puts the true distance in ``distances`` wherever ``wanted`` and not yet there."""
        if self.lon is None or self.lat is None:
            return
        todo = np.flatnonzero(wanted & ~self.exact)
        if todo.size:
            distances[todo] = geodesic_distance_m(*self.centre, self.lon[todo], self.lat[todo])
            self.exact[todo] = True

    def only(self, keep: np.ndarray) -> _TrueDistances:
        if self.lon is None or self.lat is None:
            return _TrueDistances(self.centre, self.exact[keep])
        return _TrueDistances(self.centre, self.exact[keep], self.lon[keep], self.lat[keep])


class FeedIndex:
    """The process-wide index: a base snapshot plus recent writes. A Runtime component."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        *,
        spill_above_feeds: int = 100_000,
        hot_bytes: int = 64 * 2**20,
        spill_dir: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.owners = Vocabulary()
        self.tags = Vocabulary()
        # Each feed's documents as bytes, of the revision the index holds (``rendered.py``).
        self.rendered = RenderedFeeds(
            self.owners,
            spill_above_feeds=spill_above_feeds,
            hot_bytes=hot_bytes,
            spill_dir=spill_dir,
        )
        self._base = Snapshot(Columns.empty())
        self._superseded = np.zeros(0, dtype=bool)
        self._delta = _Delta()
        self._merge_lock = asyncio.Lock()
        self._merge_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.ready = asyncio.Event()
        # Counts the times the index's content changed: caches of feed facts elsewhere (the
        # hooks' path lookups) compare it to know that nothing moved since they looked.
        self.changes = 0
        # revision_of answers, valid while ``changes`` holds (hook checks ask it per check)
        self._revisions: dict[str, int | None] = {}
        self._revisions_at = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.sessions is not None:
            await self.load(self.sessions)
        self.ready.set()

    async def stop(self) -> None:
        self._stopping = True  # a merge finishing now starts no preparation
        for task in [self._merge_task, *self._background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.rendered.close()

    async def settled(self) -> None:
        """Waits for the background work a merge started (the filter groups' sorting)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def load(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Replaces the index with every feed in the database (retired ones included)."""
        started = time.perf_counter()
        rendered = self.rendered.empty_like()
        base = await load_snapshot(sessions, self.owners, self.tags, rendered)
        self._install_base(base, {})
        self.rendered.close()
        self.rendered = rendered
        self.changes += 1
        log.info(
            "feed index loaded",
            extra={"feeds": base.size, "seconds": round(time.perf_counter() - started, 2)},
        )

    # ------------------------------------------------------------------ writes

    def __len__(self) -> int:
        return self._base.size - int(self._superseded.sum()) + len(self._delta.records)

    def revision_of(self, feed_id: str) -> int | None:
        """The revision the index holds of the feed (None if unknown)."""
        if self._revisions_at != self.changes:
            self._revisions.clear()
            self._revisions_at = self.changes
        try:
            return self._revisions[feed_id]
        except KeyError:
            pass
        revision = self._revision_now(feed_id)
        if len(self._revisions) < REVISIONS_REMEMBERED:
            self._revisions[feed_id] = revision
        return revision

    def _revision_now(self, feed_id: str) -> int | None:
        row = self._base.row_of(feed_id)
        return self._revision_at(feed_id, -1 if row is None else row)

    def _revision_at(self, feed_id: str, row: int) -> int | None:
        """:meth:`_revision_now` with the feed's row in the base already found (-1: none)."""
        record = self._delta.records.get(feed_id)
        if record is not None:
            return record.revision
        return None if row < 0 else int(self._base.columns.revision[row])

    def owners_of(self, feed_ids: Iterable[str]) -> dict[str, tuple[str, bool]]:
        """``(owner department, retired)`` of each known feed id; unknown ids are left out.

        For checks that must not query the database (heartbeats): a dict lookup in the delta,
        then one vectorised search of the base for the rest.
        """
        found: dict[str, tuple[str, bool]] = {}
        delta = self._delta.records
        in_base: list[str] = []
        for feed_id in feed_ids:
            record = delta.get(feed_id)
            if record is not None:
                found[feed_id] = (record.owner, record.retired)
            else:
                in_base.append(feed_id)
        if not in_base:
            return found
        base = self._base
        rows = base.positions_of(in_base)
        hits = np.flatnonzero(rows >= 0)
        owners = self.owners.values
        owner_codes = base.columns.owner[rows[hits]].tolist()
        retired = base.columns.retired[rows[hits]].tolist()
        for position, owner, is_retired in zip(hits.tolist(), owner_codes, retired, strict=True):
            found[in_base[position]] = (owners[owner], is_retired)
        return found

    def attributes_of(self, feed_ids: Sequence[str]) -> FeedAttributes:
        """Owner, kind, sharing class, retired flag and revision of each id, from the columns
        (access requests decide over them; see registry_api/feeds/index/lookup.py)."""
        return attributes_of(
            self._base, self._superseded, self._delta.records, self.owners, feed_ids
        )

    def apply(
        self, records: Iterable[FeedRecord], renderings: Sequence[bytes] | None = None
    ) -> None:
        """Makes committed writes visible. Older revisions than the known one are ignored.

        ``renderings`` (``rendered.py``), one per record, are stored with the records the
        index accepts; a record accepted without one drops the feed's old rendering (pages
        leave it out rather than show an older revision).
        """
        written: list[FeedRecord] = []
        records = list(records)
        base_rows = self._base.positions_of([record.id for record in records]).tolist()
        delta = self._delta.records
        stored: list[tuple[str, bytes]] = []  # put at once: the store settles once
        for position, (record, row) in enumerate(zip(records, base_rows, strict=True)):
            known = self._revision_at(record.id, row)  # not remembered: it changes in this loop
            if known is not None and known >= record.revision:
                continue
            if row >= 0:
                self._superseded[row] = True
            delta[record.id] = record
            if renderings is None:
                self.rendered.drop(record.id)
            else:
                stored.append((record.id, renderings[position]))
            written.append(record)
        if stored:
            self.rendered.put_many(stored)
        if written:
            self.changes += 1
            self._delta.wrote(written)
            if len(self._delta.records) > DELTA_LIMIT:
                self._schedule_merge()

    def apply_rows(
        self, rows: Sequence[Mapping[Any, Any]], renderings: Sequence[bytes] | None = None
    ) -> None:
        """Applies committed table rows (full rows), rendered here unless the writer has
        rendered them already (``render_rows``, one rendering per row)."""
        if renderings is None:
            renderings = render_rows(rows, self.owners)
        self.apply([FeedRecord.from_row(row) for row in rows], renderings)

    def apply_documents(self, documents: Sequence[Mapping[Any, Any]]) -> None:
        """Applies feed documents in the feed-metadata event shape (followed events)."""
        self.apply(
            [record_from_document(document) for document in documents],
            render_documents(documents, self.owners),
        )

    def apply_status_changes(self, documents: Sequence[Mapping[Any, Any]]) -> None:
        """Applies ``feed.status`` documents (status, revision and ``last_seen`` changed, nothing
        else): a feed whose stored rendering is of the revision just before gets it spliced
        (``rendered.status_changed``), the others are rendered in full."""
        patched = [self.status_rendering(document) for document in documents]
        unpatched = [documents[i] for i, rendering in enumerate(patched) if rendering is None]
        rendered = iter(render_documents(unpatched, self.owners))
        self.apply(
            [record_from_document(document) for document in documents],
            [next(rendered) if rendering is None else rendering for rendering in patched],
        )

    def status_rendering(self, document: Mapping[Any, Any]) -> bytes | None:
        """A ``feed.status`` document's rendering spliced from the stored one, when that is of
        the revision just before (``rendered.status_changed``); None otherwise."""
        stored = self.rendered.get(document["id"])
        return None if stored is None else status_changed(stored, document)

    def apply_event(self, event_data: Mapping[Any, Any]) -> None:
        """Applies one feed-metadata event (the scale-mode follower's entry point)."""
        self.apply_documents([event_data])

    async def apply_many_rows(
        self, rows: Sequence[Mapping[Any, Any]], renderings: Sequence[bytes]
    ) -> None:
        """Applies a big batch of committed rows rendered by their writer (a catalog of
        thousands of channels) as the bulk import does (:meth:`apply_columns`): their records
        and columns are built in a worker thread, and only the new base is installed here.
        Through :meth:`apply_rows` a 50,000-channel catalog held the event loop ~150 ms."""
        ids = [row["id"] for row in rows]
        if len(set(ids)) < len(ids):  # a feed twice: applied in order, as written
            self.apply_rows(rows, renderings)
            await self.merge()
            return
        columns = await asyncio.to_thread(
            lambda: self.columns_of([FeedRecord.from_row(row) for row in rows])
        )
        await self.apply_columns(columns, [self.rendered.stage(ids, list(renderings), len(ids))])

    async def apply_and_merge(self, records: Sequence[FeedRecord]) -> None:
        """For big batches: apply, then fold everything into a new base now."""
        self.apply(records)
        await self.merge()

    def columns_of(self, records: Sequence[FeedRecord]) -> Columns:
        """Records as columns in this index's vocabularies (for :meth:`apply_columns`)."""
        return Columns.from_records(records, self.owners, self.tags)

    async def apply_columns(self, incoming: Columns, renderings: Sequence[Staged]) -> None:
        """Folds a big batch of committed writes, prepared as columns, into a new base.

        Bulk imports prepare the columns (and renderings, by feed id) while the database is
        still busy writing, so only the merge itself (sorting and grids, in a worker thread)
        follows the commit.
        """
        async with self._merge_lock:
            merged, dropped = await asyncio.to_thread(merge_columns_dropping, self._base, incoming)
            self._install_base(merged, self._delta.records)
            # Feeds changed again meanwhile keep their newer renderings: those in the delta,
            # and those whose newer write a merge folded into the base before this one (the
            # merge dropped their rows here, and their renderings must not replace the newer).
            newer = self._delta.records.keys() | set(dropped) if dropped else self._delta.records
            self.rendered.adopt(renderings, except_ids=newer)
            self.changes += 1

    def _schedule_merge(self) -> None:
        if self._merge_task is None or self._merge_task.done():
            self._merge_task = asyncio.get_running_loop().create_task(self.merge())

    async def merge(self) -> None:
        async with self._merge_lock:
            if not self._delta.records:
                return
            base = self._base
            pending = list(self._delta.records.values())
            merged = await asyncio.to_thread(merge_snapshot, base, pending, self.owners, self.tags)
            self._install_base(merged, self._delta.records)

    def _install_base(self, base: Snapshot, delta: dict[str, FeedRecord]) -> None:
        # the delta's rows in the new base in one search (a big catalog leaves 50,000 records)
        rows = base.positions_of(list(delta))
        revisions = np.full(rows.shape[0], -1, dtype=np.int64)  # -1: not in the base
        found = rows >= 0
        revisions[found] = base.columns.revision[rows[found]]
        remaining = {
            feed_id: record
            for (feed_id, record), revision in zip(delta.items(), revisions.tolist(), strict=True)
            if revision < record.revision
        }
        superseded = np.zeros(base.size, dtype=bool)
        superseded[base.rows_of(list(remaining))] = True
        self._base = base
        self._superseded = superseded
        self._delta = _Delta(remaining)
        if base.size > DELTA_LIMIT and not self._stopping:
            task = asyncio.get_running_loop().create_task(self._prepare(base))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _prepare(self, base: Snapshot) -> None:
        if base is self._base:  # a newer base may have replaced it already
            await asyncio.to_thread(base.prepare_groups)

    # ------------------------------------------------------------------ reads

    def _all_matches(self, query: IndexQuery) -> list[tuple[Snapshot, Matches]]:
        vocabularies = (self.owners, self.tags)
        found = []
        for snapshot, skipped in [
            (self._base, self._superseded),
            *self._delta.snapshots(self.owners, self.tags),
        ]:
            matches = snapshot.match(query, vocabularies=vocabularies)
            if skipped.any():
                matches = matches.only(~skipped[matches.rows])
            found.append((snapshot, matches))
        return found

    def search(self, query: IndexQuery, *, limit: int, cursor: str | None = None) -> IndexPage:
        """One page of matching feed ids: nearest first for ``near``, else in id order."""
        after = decode_cursor(cursor) if cursor else None
        found = self._all_matches(query)
        total = sum(matches.rows.shape[0] for _, matches in found)
        if query.near is not None:
            return self._nearest_page(found, total, limit, after, query.near[:2])
        # Each snapshot's rows ascend in id order: only the head after the cursor is needed.
        heads = []
        for snapshot, matches in found:
            rows = matches.rows
            if after is not None:
                start = np.searchsorted(snapshot.columns.ids, after[0].encode(), side="right")
                rows = rows[rows >= start]
            if rows.shape[0] > limit + 1:  # the lowest rows are the lowest ids: no full sort
                if is_sorted(rows):  # as most matches come (a scan, a group's rows)
                    rows = rows[: limit + 1]
                else:
                    rows = np.partition(rows, limit)[: limit + 1]
            heads.append(snapshot.columns.ids[np.sort(rows)])
        ids = np.sort(np.concatenate(heads)) if len(heads) > 1 else heads[0]
        page = [value.decode() for value in ids[:limit]]
        next_cursor = encode_cursor(page[-1], None) if ids.shape[0] > limit and page else None
        return IndexPage(page, None, total, next_cursor)

    @staticmethod
    def _nearest_page(
        found: list[tuple[Snapshot, Matches]],
        total: int,
        limit: int,
        after: tuple[str, float | None] | None,
        centre: tuple[float, float],
    ) -> IndexPage:
        """The page after the cursor, nearest first (ties by id). The matches may carry local
        distances (``Matches.exact``): the rows whose true distance decides the page (those
        near the cursor's distance, and those that can be among its ``limit`` nearest) get
        it first, so the page, its order and its cursor are those of true distances."""
        ids = np.concatenate([snapshot.columns.ids[matches.rows] for snapshot, matches in found])
        distances = np.concatenate([matches.distances for _, matches in found])
        true = _TrueDistances.of(found, centre)
        if after is not None:
            last_id, last_distance = after
            if last_distance is None:
                raise InvalidCursor("the cursor does not belong to a near search")
            true.make(
                distances, np.abs(distances - last_distance) <= local_distance_error_m(distances)
            )
            later = (distances > last_distance) | (
                (distances == last_distance) & (ids > last_id.encode())
            )
            ids, distances = ids[later], distances[later]
            true = true.only(later)
        more = ids.shape[0] > limit
        if more:  # only the page needs sorting: keep what can be among the limit nearest
            if not true.all:
                # the limit nearest by local distance are truly within ``reach``; a row truly
                # that near has a local distance within ``reach`` plus its error
                nearest = np.partition(distances, limit - 1)[limit - 1]
                reach = nearest + local_distance_error_m(nearest)
                candidates = distances <= (reach + LOCAL_DISTANCE_SLACK_M) / (
                    1 - LOCAL_DISTANCE_TOLERANCE
                )
                true.make(distances, candidates)
                ids, distances = ids[candidates], distances[candidates]
            kth = np.partition(distances, limit - 1)[limit - 1]
            close = distances <= kth
            ids, distances = ids[close], distances[close]
        else:
            true.make(distances, np.ones(distances.shape[0], dtype=bool))
        order = np.lexsort((ids, distances))[:limit]
        page_ids, page_distances = ids[order], distances[order]
        decoded = [value.decode() for value in page_ids]
        next_cursor = (
            encode_cursor(decoded[-1], float(page_distances[-1])) if more and decoded else None
        )
        return IndexPage(decoded, [float(value) for value in page_distances], total, next_cursor)

    def matching_columns(self, query: IndexQuery) -> dict[str, np.ndarray]:
        """Ids, owners, kinds, positions and fields of view of every match (for reports)."""
        names = ("ids", "owner", "kind", "lon", "lat", "fov")
        columns = gather_columns(self.matching_rows(query), names)
        owner_names = np.array(self.owners.values + [""], dtype=object)
        columns["owner"] = owner_names[columns["owner"]]
        return columns

    def matching_rows(self, query: IndexQuery) -> list[tuple[Columns, np.ndarray]]:
        """The matching rows of each snapshot, with its columns (in no particular order).

        Cheap; gathering a million rows is not. Snapshots never change once built, so
        :func:`gather_columns` may run later, in a worker thread, while writes go on.
        """
        return [(snapshot.columns, matches.rows) for snapshot, matches in self._all_matches(query)]
