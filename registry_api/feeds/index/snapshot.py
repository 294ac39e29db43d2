"""An immutable snapshot of the index: id-sorted columns with their grids, answering every
predicate of a query; merging a batch of records or columns into a new one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

from registry_api.feeds.geodesy import (
    UNSURE,
    fov_polygons,
    fov_verdicts,
    near_distances,
    radius_box,
)
from registry_api.feeds.index.columns import Columns
from registry_api.feeds.index.grid import (
    GRID_COLUMNS,
    MAX_FOOTPRINT_CELLS,
    cell_key,
    cell_key_ranges,
    concat_ranges,
    grid_column,
    grid_row,
    split_antimeridian,
)
from registry_api.feeds.index.queries import IndexQuery, Matches
from registry_api.feeds.index.records import (
    ID_DTYPE,
    KIND_CODE,
    SHARING_CODE,
    STATUS_CODE,
    FeedRecord,
    Vocabulary,
)


class Snapshot:
    """Immutable, id-sorted columns with their grids. Built off the event loop for big sets."""

    def __init__(self, columns: Columns) -> None:
        order = np.argsort(columns.ids, kind="stable") if not is_sorted(columns.ids) else None
        self.columns = columns.take(order) if order is not None else columns
        c = self.columns
        self.size = len(c)
        keys = grid_row(c.lat) * GRID_COLUMNS + grid_column(c.lon)
        self.point_order = np.argsort(keys, kind="stable").astype(np.int32)
        self.point_keys = keys[self.point_order]
        self._build_footprint_grid()
        self._groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.any_retired = bool(c.retired.any())  # no retired row: no row to leave out

    def prepare_groups(self) -> None:
        """Sorts every grouped attribute (in a worker thread, after the snapshot went live:
        until then filters scan the columns, which is slower but not wrong)."""
        for name in GROUPED_ATTRIBUTES:
            self._group(name)

    def _group(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(values sorted, rows in that order) of a categorical attribute; within one value
        the rows ascend, so the rows holding a value are a ready, sorted slice."""
        cached = self._groups.get(name)
        if cached is None:
            c = self.columns
            if name == "tag":
                order = np.lexsort((c.tag_rows, c.tag_codes))
                cached = (c.tag_codes[order], c.tag_rows[order])
            else:
                column = getattr(c, name)
                order = np.argsort(column, kind="stable")
                cached = (column[order], order.astype(np.int32))
            self._groups[name] = cached
        return cached

    def rows_with(self, name: str, value: int) -> np.ndarray:
        """Rows whose attribute ``name`` equals ``value`` (ascending)."""
        values, rows = self._group(name)
        key = np.asarray(value, dtype=values.dtype)  # the column's dtype: searched in place
        return rows[np.searchsorted(values, key, "left") : np.searchsorted(values, key, "right")]

    def _build_footprint_grid(self) -> None:
        bounds = self.columns.footprint
        rows = np.flatnonzero(~np.isnan(bounds[:, 0]))
        row0 = grid_row(bounds[rows, 1])
        row1 = grid_row(bounds[rows, 3])
        col0 = grid_column(bounds[rows, 0])
        col1 = grid_column(bounds[rows, 2])
        width = col1 - col0 + 1
        counts = (row1 - row0 + 1) * width
        big = counts > MAX_FOOTPRINT_CELLS
        self.oversized = rows[big].astype(np.int32)
        rows, row0, col0, width, counts = (
            rows[~big],
            row0[~big],
            col0[~big],
            width[~big],
            counts[~big],
        )
        owner = np.repeat(np.arange(rows.shape[0]), counts)
        local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        keys = (
            (row0[owner] + local // width[owner]) * GRID_COLUMNS
            + col0[owner]
            + local % width[owner]
        )
        order = np.argsort(keys, kind="stable")
        self.footprint_keys = keys[order]
        self.footprint_rows = rows[owner[order]].astype(np.int32)

    # ------------------------------------------------------------------ lookups

    def row_of(self, feed_id: str) -> int | None:
        key = feed_id.encode()
        position = int(np.searchsorted(self.columns.ids, key))
        if position < self.size and self.columns.ids[position] == key:
            return position
        return None

    def positions_of(self, feed_ids: Sequence[str]) -> np.ndarray:
        """The row of each id, in order, -1 where it is absent: :meth:`row_of` of many ids in
        one search. An id the id column cannot hold (not ASCII letters and digits, or too
        long: ``ID_DTYPE`` would cut or pad it into another id) is absent."""
        found = np.full(len(feed_ids), -1, dtype=np.int64)
        if not self.size:
            return found
        width = self.columns.ids.dtype.itemsize
        held = [
            position
            for position, feed_id in enumerate(feed_ids)
            if feed_id.isascii() and feed_id.isalnum() and len(feed_id) <= width
        ]
        if not held:
            return found
        wanted = np.array([feed_ids[position] for position in held], dtype=ID_DTYPE)
        positions = np.minimum(np.searchsorted(self.columns.ids, wanted), self.size - 1)
        found[held] = np.where(self.columns.ids[positions] == wanted, positions, -1)
        return found

    def rows_of(self, feed_ids: Sequence[str]) -> np.ndarray:
        """Rows of the ids present in this snapshot (absent ids are skipped)."""
        rows = self.positions_of(feed_ids)
        return rows[rows >= 0]

    def points_in_box(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Rows whose position lies in the lon/lat box (edges included), in grid order."""
        found = []
        for part in split_antimeridian(*box):
            first, last = cell_key_ranges(part)
            starts = np.searchsorted(self.point_keys, first, side="left")
            ends = np.searchsorted(self.point_keys, last, side="right")
            candidates = self.point_order[concat_ranges(starts, ends)]
            lon = self.columns.lon[candidates]
            lat = self.columns.lat[candidates]
            inside = (lon >= part[0]) & (lon <= part[2]) & (lat >= part[1]) & (lat <= part[3])
            found.append(candidates[inside])
        return np.concatenate(found)  # each point sits in one cell: no duplicates

    def footprints_touching(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Rows whose footprint bounds intersect the box, ascending."""
        found = [self.oversized] if self.oversized.size else []
        cells = 0
        for part in split_antimeridian(*box):
            first, last = cell_key_ranges(part)
            cells += int((last - first).sum()) + first.shape[0]
            starts = np.searchsorted(self.footprint_keys, first, side="left")
            ends = np.searchsorted(self.footprint_keys, last, side="right")
            found.append(self.footprint_rows[concat_ranges(starts, ends)])
        if cells == 1 and len(found) == 1:
            candidates = found[0]  # one cell: each row once, ascending already
        else:
            candidates = np.unique(np.concatenate(found))
        return self._bounds_touching(candidates, box)

    def footprints_at(self, lon: float, lat: float) -> np.ndarray:
        """Rows whose footprint bounds hold the point, ascending: :meth:`footprints_touching`
        for a point, whose one cell needs no box arithmetic."""
        key = cell_key(lon, lat)
        start = int(self.footprint_keys.searchsorted(key, "left"))
        end = int(self.footprint_keys.searchsorted(key, "right"))
        candidates = self.footprint_rows[start:end]  # one cell: each row once, ascending
        if self.oversized.size:
            candidates = np.union1d(candidates, self.oversized)
        return self._bounds_touching(candidates, (lon, lat, lon, lat))

    def _bounds_touching(
        self, candidates: np.ndarray, box: tuple[float, float, float, float]
    ) -> np.ndarray:
        bounds = self.columns.footprint[candidates]
        min_lon, min_lat, max_lon, max_lat = box
        touching = (
            (bounds[:, 0] <= max_lon) & (bounds[:, 2] >= min_lon)
            & (bounds[:, 1] <= max_lat) & (bounds[:, 3] >= min_lat)
        )  # fmt: skip
        return candidates[touching]

    def footprint_shapes(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(FOV polygons, coverage polygons) of the rows; None where a row has no such shape."""
        fov = self.columns.fov[rows]
        polygons = np.full(rows.shape[0], None, dtype=object)
        has_fov = ~np.isnan(fov[:, 0])
        if has_fov.any():
            chosen = rows[has_fov]
            polygons[has_fov] = fov_polygons(
                self.columns.lon[chosen],
                self.columns.lat[chosen],
                fov[has_fov, 0],
                fov[has_fov, 1],
                fov[has_fov, 2],
            )
        return polygons, self.columns.coverage[rows]

    # ------------------------------------------------------------------ predicates

    def _rows_seeing(self, lon: float, lat: float) -> np.ndarray:
        """Rows whose field of view or coverage holds the point. A view is decided in its local
        frame where that is sure (:func:`fov_verdicts`); only the few points near a view's
        edges are tested against its polygon."""
        candidates = self.footprints_at(lon, lat)
        if candidates.size == 0:
            return candidates
        c = self.columns
        fov = c.fov[candidates]
        seen = np.zeros(candidates.shape[0], dtype=bool)
        has_fov = np.flatnonzero(~np.isnan(fov[:, 0]))
        if has_fov.size:
            rows = candidates[has_fov]
            verdicts = fov_verdicts(
                c.lon[rows], c.lat[rows], fov[has_fov, 0], fov[has_fov, 1], fov[has_fov, 2],
                lon, lat,
            )  # fmt: skip
            unsure = np.flatnonzero(verdicts == UNSURE)
            if unsure.size:
                polygons, _ = self.footprint_shapes(rows[unsure])
                verdicts[unsure] = shapely.intersects_xy(polygons, lon, lat)
            seen[has_fov] = verdicts == 1
        seen |= shapely.intersects_xy(c.coverage[candidates], lon, lat)  # None: False
        return candidates[seen]

    def _rows_in_geometry(self, geometry: shapely.Geometry, relation: str) -> np.ndarray:
        shapely.prepare(geometry)
        min_lon, min_lat, max_lon, max_lat = (float(value) for value in geometry.bounds)
        box = (min_lon, min_lat, max_lon, max_lat)
        points = self.points_in_box(box)
        inside = points[
            shapely.intersects_xy(geometry, self.columns.lon[points], self.columns.lat[points])
        ]
        if relation == "within":
            return inside
        candidates = self.footprints_touching(box)
        candidates = candidates[~np.isin(candidates, inside, assume_unique=True)]
        if candidates.size == 0:
            return inside
        polygons, coverage = self.footprint_shapes(candidates)
        touching = shapely.intersects(geometry, polygons) | shapely.intersects(geometry, coverage)
        return np.concatenate([inside, candidates[touching]])

    def match(self, query: IndexQuery, *, vocabularies: tuple[Vocabulary, Vocabulary]) -> Matches:
        """Rows matching every predicate of the query (in no particular order)."""
        if self.size == 0:
            return Matches(np.empty(0, dtype=np.int64), np.empty(0) if query.near else None)
        rows: np.ndarray | None = None

        def narrow(found: np.ndarray) -> np.ndarray:
            return found if rows is None else np.intersect1d(rows, found, assume_unique=True)

        if query.feed_ids is not None:
            rows = narrow(np.unique(self.rows_of(list(query.feed_ids))))
        if query.bbox is not None:
            rows = narrow(self.points_in_box(query.bbox))
        if query.sees is not None:
            rows = narrow(self._rows_seeing(*query.sees))
        if query.geometry is not None:
            rows = narrow(self._rows_in_geometry(query.geometry, query.relation))
        if query.near is not None:
            lon, lat, metres = query.near
            rows = narrow(self.points_in_box(radius_box(lon, lat, metres)))
        rows = self._filter_attributes(rows, query, vocabularies)
        if query.near is None:
            return Matches(rows)
        lon, lat, metres = query.near
        distances, exact = near_distances(
            lon, lat, self.columns.lon[rows], self.columns.lat[rows], metres
        )
        return Matches(rows, distances, exact).only(distances <= metres)

    def _filter_attributes(
        self,
        rows: np.ndarray | None,
        query: IndexQuery,
        vocabularies: tuple[Vocabulary, Vocabulary],
    ) -> np.ndarray:
        c = self.columns
        owners, tags = vocabularies
        wanted = _wanted_codes(query, owners, tags)
        start = None
        if rows is None and wanted and all(name in self._groups for name in wanted):
            # start from the rarest value asked for instead of scanning every row (its rows
            # need no test of that value again)
            start, rows = min(
                ((name, self.rows_with(name, code)) for name, code in wanted.items()),
                key=lambda found: found[1].shape[0],
            )
        view = slice(None) if rows is None else rows
        # the conditions ANDed, None while there is none: rows a group gave whole are the
        # answer as they are (no mask of every row, no copy)
        mask: np.ndarray | None = None

        def keep(condition: np.ndarray) -> None:
            nonlocal mask
            mask = condition if mask is None else mask & condition

        if not query.include_retired and self.any_retired:
            keep(~c.retired[view])
        for name, code in wanted.items():
            if name not in (start, "tag"):
                keep(getattr(c, name)[view] == code)
        if query.region is not None:
            scale = 10 ** (8 - len(query.region))
            low = int(query.region) * scale
            region = c.region[view]
            keep((region >= low) & (region < low + scale))
        if query.placed is not None:
            keep(np.isnan(c.lon[view]) != query.placed)
        if query.tag is not None and start != "tag":
            tagged = np.zeros(self.size, dtype=bool)
            if "tag" in self._groups:
                tagged[self.rows_with("tag", wanted["tag"])] = True
            else:
                tagged[c.tag_rows[c.tag_codes == wanted["tag"]]] = True
            keep(tagged[view])
        if mask is None:
            result = np.arange(self.size) if rows is None else rows
        else:
            result = np.flatnonzero(mask) if rows is None else rows[mask]
        if query.text is not None and result.size:
            needle = query.text.casefold()
            names = c.names[result]
            result = result[np.fromiter((needle in name for name in names), bool, result.shape[0])]
        return result


GROUPED_ATTRIBUTES = ("owner", "kind", "industry", "type_code", "sharing", "status", "tag")


def _wanted_codes(query: IndexQuery, owners: Vocabulary, tags: Vocabulary) -> dict[str, int]:
    """The query's categorical filters as column codes (-1: a value no feed has)."""
    wanted: dict[str, int] = {}
    if query.owner is not None:
        code = owners.lookup(query.owner)
        wanted["owner"] = -1 if code is None else code
    if query.kind is not None:
        wanted["kind"] = KIND_CODE[query.kind]
    if query.industry is not None:
        wanted["industry"] = int(query.industry)
    if query.type_code is not None:
        wanted["type_code"] = int(query.type_code)
    if query.sharing is not None:
        wanted["sharing"] = SHARING_CODE[query.sharing]
    if query.status is not None:
        wanted["status"] = STATUS_CODE[query.status]
    if query.tag is not None:
        code = tags.lookup(query.tag)
        wanted["tag"] = -1 if code is None else code
    return wanted


def is_sorted(values: np.ndarray) -> bool:
    return values.shape[0] < 2 or bool(np.all(values[:-1] <= values[1:]))


def merge_columns(base: Snapshot, incoming: Columns) -> Snapshot:
    """A new snapshot: ``base`` plus ``incoming``; for an id in both, the higher revision wins."""
    return merge_columns_dropping(base, incoming)[0]


def merge_columns_dropping(base: Snapshot, incoming: Columns) -> tuple[Snapshot, list[str]]:
    """:func:`merge_columns`, and the ids of the incoming rows it dropped because the base
    holds a newer revision of their feeds (whatever came with those rows is stale too)."""
    dropped: list[str] = []
    if base.size == 0:
        return Snapshot(incoming), dropped
    incoming_ids = incoming.ids.astype(str).tolist()
    replaced = base.rows_of(incoming_ids)
    if replaced.size:
        # incoming rows older than the base's version of the same feed are dropped
        base_revision = dict(
            zip(
                base.columns.ids[replaced].tolist(),
                base.columns.revision[replaced].tolist(),
                strict=True,
            )
        )
        stale = np.fromiter(
            (
                base_revision.get(key, -1) > revision
                for key, revision in zip(
                    incoming.ids.tolist(), incoming.revision.tolist(), strict=True
                )
            ),
            bool,
            len(incoming),
        )
        if stale.any():
            dropped = incoming.ids[stale].astype(str).tolist()
            incoming = incoming.take(np.flatnonzero(~stale))
            replaced = base.rows_of(incoming.ids.astype(str).tolist())
    kept = None
    if replaced.size:
        keep = np.ones(base.size, dtype=bool)
        keep[replaced] = False
        kept = np.flatnonzero(keep)
    if not is_sorted(incoming.ids):
        incoming = incoming.take(np.argsort(incoming.ids, kind="stable"))
    return Snapshot(Columns.interleave(base.columns, kept, incoming)), dropped


def merge_snapshot(
    base: Snapshot, records: Sequence[FeedRecord], owners: Vocabulary, tags: Vocabulary
) -> Snapshot:
    """A new snapshot: ``base`` with ``records`` replacing (or adding to) its rows."""
    return merge_columns(base, Columns.from_records(records, owners, tags))
