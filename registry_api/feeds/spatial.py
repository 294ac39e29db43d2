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
import base64
import binascii
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import shapely
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.feeds.geodesy import fov_bounds, fov_polygons, geodesic_distance_m, radius_box
from registry_api.feeds.models import Feed

log = logging.getLogger("feedgrid.feeds.index")

CELL_DEGREES = 0.01
GRID_COLUMNS = 36_000
GRID_ROWS = 18_000
MAX_FOOTPRINT_CELLS = 256
DELTA_LIMIT = 2_000
LOAD_CHUNK = 50_000

KINDS = ("camera", "sensor")
SHARING = ("unconditional", "conditional", "not_shared")
STATUSES = ("online", "offline", "unknown")
_KIND_CODE = {value: code for code, value in enumerate(KINDS)}
_SHARING_CODE = {value: code for code, value in enumerate(SHARING)}
_STATUS_CODE = {value: code for code, value in enumerate(STATUSES)}
ID_DTYPE = "S26"


class InvalidCursor(ValueError):
    pass


# ---------------------------------------------------------------------------- records


@dataclass(slots=True)
class FeedRecord:
    """What the index keeps of one feed."""

    id: str
    revision: int
    owner: str
    kind: str
    industry: str | None
    type_code: str | None
    region: str | None
    sharing: str
    status: str
    retired: bool
    tags: Sequence[str]
    name: str
    lon: float
    lat: float
    fov: tuple[float, float, float] | None = None
    coverage: shapely.Geometry | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> FeedRecord:
        coverage = row["coverage"]
        return cls(
            id=row["id"],
            revision=row["revision"],
            owner=row["owner"],
            kind=row["kind"],
            industry=row["gb_industry"],
            type_code=row["gb_type"],
            region=row["gb_region"],
            sharing=row["sharing_class"],
            status=row["status"],
            retired=row["retired_at"] is not None,
            tags=row["tags"],
            name=row["name"],
            lon=row["lon"],
            lat=row["lat"],
            fov=(
                (row["fov_heading"], row["fov_angle"], row["fov_range_m"])
                if row["fov_heading"] is not None
                else None
            ),
            coverage=shapely.geometry.shape(coverage) if coverage else None,
        )


# Columns FeedRecord.from_row reads: the index loads exactly these.
RECORD_COLUMNS = (
    Feed.id, Feed.revision, Feed.owner, Feed.kind, Feed.gb_industry, Feed.gb_type,
    Feed.gb_region, Feed.sharing_class, Feed.status, Feed.retired_at, Feed.tags, Feed.name,
    Feed.lon, Feed.lat, Feed.fov_heading, Feed.fov_angle, Feed.fov_range_m, Feed.coverage,
)  # fmt: skip


class Vocabulary:
    """Strings (owners, tags) as small integers; append-only, shared by all snapshots."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.values: list[str] = []
        self._lock = threading.Lock()

    def code(self, value: str) -> int:
        found = self._codes.get(value)
        if found is not None:
            return found
        with self._lock:
            found = self._codes.get(value)
            if found is None:
                found = len(self.values)
                self.values.append(value)
                self._codes[value] = found
            return found

    def lookup(self, value: str) -> int | None:
        return self._codes.get(value)


# ---------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class IndexQuery:
    owner: str | None = None
    kind: str | None = None
    industry: str | None = None
    type_code: str | None = None
    region: str | None = None
    sharing: str | None = None
    status: str | None = None
    tag: str | None = None
    text: str | None = None
    include_retired: bool = False
    bbox: tuple[float, float, float, float] | None = None
    near: tuple[float, float, float] | None = None
    sees: tuple[float, float] | None = None
    geometry: shapely.Geometry | None = None
    relation: str = "intersects"


@dataclass
class Matches:
    """Rows of one snapshot that match (any order); distances aligned for ``near``."""

    rows: np.ndarray
    distances: np.ndarray | None = None


@dataclass
class IndexPage:
    ids: list[str]
    distances: list[float] | None
    total: int
    next_cursor: str | None


def encode_cursor(last_id: str, distance: float | None) -> str:
    payload: dict[str, Any] = {"i": last_id}
    if distance is not None:
        payload["d"] = distance
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, float | None]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        last_id = payload["i"]
        distance = payload.get("d")
        if not isinstance(last_id, str) or not (
            distance is None or isinstance(distance, int | float)
        ):
            raise TypeError
        return last_id, None if distance is None else float(distance)
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidCursor("the cursor is not one this API handed out") from None


# ---------------------------------------------------------------------------- grid helpers


def _grid_row(lat: np.ndarray | float) -> np.ndarray:
    return np.clip(np.floor((np.asarray(lat) + 90.0) / CELL_DEGREES), 0, GRID_ROWS - 1).astype(
        np.int64
    )


def _grid_column(lon: np.ndarray | float) -> np.ndarray:
    return np.clip(np.floor((np.asarray(lon) + 180.0) / CELL_DEGREES), 0, GRID_COLUMNS - 1).astype(
        np.int64
    )


def _concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices start..end-1 of every range, concatenated, without a Python loop."""
    lengths = np.maximum(ends - starts, 0)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def _split_antimeridian(
    min_lon: float, min_lat: float, max_lon: float, max_lat: float
) -> list[tuple[float, float, float, float]]:
    if max_lon - min_lon >= 360.0:
        return [(-180.0, min_lat, 180.0, max_lat)]
    if min_lon < -180.0:
        return [(min_lon + 360.0, min_lat, 180.0, max_lat), (-180.0, min_lat, max_lon, max_lat)]
    if max_lon > 180.0:
        return [(min_lon, min_lat, 180.0, max_lat), (-180.0, min_lat, max_lon - 360.0, max_lat)]
    return [(min_lon, min_lat, max_lon, max_lat)]


def _cell_key_ranges(box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """First and last grid key of every grid row the box covers."""
    min_lon, min_lat, max_lon, max_lat = box
    rows = np.arange(int(_grid_row(min_lat)), int(_grid_row(max_lat)) + 1, dtype=np.int64)
    first = rows * GRID_COLUMNS + int(_grid_column(min_lon))
    last = rows * GRID_COLUMNS + int(_grid_column(max_lon))
    return first, last


# ---------------------------------------------------------------------------- snapshot


@dataclass
class Columns:
    """Per-feed arrays, any order (a snapshot sorts them by id)."""

    ids: np.ndarray
    revision: np.ndarray
    owner: np.ndarray
    kind: np.ndarray
    industry: np.ndarray
    type_code: np.ndarray
    region: np.ndarray
    sharing: np.ndarray
    status: np.ndarray
    retired: np.ndarray
    names: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    fov: np.ndarray  # (n, 3) heading, angle, range; NaN when none
    coverage: np.ndarray  # object: shapely geometry or None
    footprint: np.ndarray  # (n, 4) bounds of FOV + coverage; NaN when none
    tag_rows: np.ndarray
    tag_codes: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def empty(cls) -> Columns:
        return cls.from_records([], Vocabulary(), Vocabulary())

    @classmethod
    def from_records(
        cls, records: Sequence[FeedRecord], owners: Vocabulary, tags: Vocabulary
    ) -> Columns:
        count = len(records)
        fov = np.full((count, 3), np.nan)
        coverage = np.empty(count, dtype=object)
        tag_rows: list[int] = []
        tag_codes: list[int] = []
        for row, record in enumerate(records):
            if record.fov is not None:
                fov[row] = record.fov
            if record.coverage is not None:
                coverage[row] = record.coverage
            for tag in record.tags:
                tag_rows.append(row)
                tag_codes.append(tags.code(tag))
        lon = np.fromiter((record.lon for record in records), np.float64, count)
        lat = np.fromiter((record.lat for record in records), np.float64, count)
        return cls(
            ids=np.array([record.id for record in records], dtype=ID_DTYPE),
            revision=np.fromiter((record.revision for record in records), np.int32, count),
            owner=np.fromiter((owners.code(record.owner) for record in records), np.int32, count),
            kind=np.fromiter((_KIND_CODE[record.kind] for record in records), np.int8, count),
            industry=np.fromiter(
                (int(record.industry) if record.industry else -1 for record in records),
                np.int16,
                count,
            ),
            type_code=np.fromiter(
                (int(record.type_code) if record.type_code else -1 for record in records),
                np.int16,
                count,
            ),
            region=np.fromiter(
                (int(record.region) if record.region else -1 for record in records), np.int32, count
            ),
            sharing=np.fromiter(
                (_SHARING_CODE[record.sharing] for record in records), np.int8, count
            ),
            status=np.fromiter((_STATUS_CODE[record.status] for record in records), np.int8, count),
            retired=np.fromiter((record.retired for record in records), np.bool_, count),
            names=np.array([record.name.casefold() for record in records] or [], dtype=object),
            lon=lon,
            lat=lat,
            fov=fov,
            coverage=coverage,
            footprint=_footprints(lon, lat, fov, coverage),
            tag_rows=np.array(tag_rows, dtype=np.int32),
            tag_codes=np.array(tag_codes, dtype=np.int32),
        )

    def take(self, rows: np.ndarray) -> Columns:
        """The given rows, in the given order (tags follow their rows)."""
        position = np.full(len(self), -1, dtype=np.int64)
        position[rows] = np.arange(rows.shape[0])
        tag_position = position[self.tag_rows]
        keep = tag_position >= 0
        return Columns(
            ids=self.ids[rows],
            revision=self.revision[rows],
            owner=self.owner[rows],
            kind=self.kind[rows],
            industry=self.industry[rows],
            type_code=self.type_code[rows],
            region=self.region[rows],
            sharing=self.sharing[rows],
            status=self.status[rows],
            retired=self.retired[rows],
            names=self.names[rows],
            lon=self.lon[rows],
            lat=self.lat[rows],
            fov=self.fov[rows],
            coverage=self.coverage[rows],
            footprint=self.footprint[rows],
            tag_rows=tag_position[keep].astype(np.int32),
            tag_codes=self.tag_codes[keep],
        )

    @staticmethod
    def concat_all(parts: Sequence[Columns]) -> Columns:
        """The parts one after another (each column copied once)."""
        if not parts:
            return Columns.empty()
        offsets = np.cumsum([0] + [len(part) for part in parts[:-1]])
        joined = {
            name: np.concatenate([getattr(part, name) for part in parts])
            for name in Columns.__dataclass_fields__
            if name != "tag_rows"
        }
        joined["tag_rows"] = np.concatenate(
            [part.tag_rows + offset for part, offset in zip(parts, offsets, strict=True)]
        ).astype(np.int32)
        return Columns(**joined)

    @staticmethod
    def concat(first: Columns, second: Columns) -> Columns:
        return Columns.concat_all([first, second])


@dataclass
class IndexPart:
    """Index columns of freshly validated features, built without the index's state (in the
    bulk helper process): ids, revisions and statuses are blanks, owners and tags are coded
    in a vocabulary of their own. :meth:`adopt` completes the rows that get written."""

    columns: Columns
    owners: list[str]
    tags: list[str]

    @classmethod
    def of(cls, rows: Iterable[Mapping[Any, Any]]) -> IndexPart:
        blanks = {"id": "", "revision": 0, "status": "unknown", "retired_at": None}
        records = [FeedRecord.from_row({**row, **blanks}) for row in rows]
        owners, tags = Vocabulary(), Vocabulary()
        return cls(Columns.from_records(records, owners, tags), owners.values, tags.values)

    def adopt(
        self,
        positions: Sequence[int],
        ids: Sequence[str],
        revisions: Sequence[int],
        statuses: Sequence[str],
        owners: Vocabulary,
        tags: Vocabulary,
    ) -> Columns:
        """The rows at ``positions`` with their ids, revisions and statuses, coded in the
        index's own vocabularies."""
        chosen = self.columns.take(np.asarray(positions, dtype=np.int64))
        owner_codes = np.array([owners.code(name) for name in self.owners] or [0], dtype=np.int32)
        tag_codes = np.array([tags.code(name) for name in self.tags] or [0], dtype=np.int32)
        chosen.ids = np.array(ids, dtype=ID_DTYPE)
        chosen.revision = np.array(revisions, dtype=np.int32)
        chosen.status = np.array([_STATUS_CODE[status] for status in statuses], dtype=np.int8)
        chosen.owner = owner_codes[chosen.owner]
        chosen.tag_codes = tag_codes[chosen.tag_codes]
        return chosen


def _footprints(
    lon: np.ndarray, lat: np.ndarray, fov: np.ndarray, coverage: np.ndarray
) -> np.ndarray:
    bounds = np.full((lon.shape[0], 4), np.nan)
    has_fov = ~np.isnan(fov[:, 0])
    if has_fov.any():
        bounds[has_fov] = fov_bounds(
            lon[has_fov], lat[has_fov], fov[has_fov, 0], fov[has_fov, 1], fov[has_fov, 2]
        )
    has_coverage = np.flatnonzero(shapely.is_geometry(coverage))
    if has_coverage.size:
        cover_bounds = shapely.bounds(coverage[has_coverage].astype(object))
        current = bounds[has_coverage]
        bounds[has_coverage] = np.column_stack(
            [
                np.fmin(current[:, 0], cover_bounds[:, 0]),
                np.fmin(current[:, 1], cover_bounds[:, 1]),
                np.fmax(current[:, 2], cover_bounds[:, 2]),
                np.fmax(current[:, 3], cover_bounds[:, 3]),
            ]
        )
    return bounds


class Snapshot:
    """Immutable, id-sorted columns with their grids. Built off the event loop for big sets."""

    def __init__(self, columns: Columns) -> None:
        order = np.argsort(columns.ids, kind="stable") if not _is_sorted(columns.ids) else None
        self.columns = columns.take(order) if order is not None else columns
        c = self.columns
        self.size = len(c)
        keys = _grid_row(c.lat) * GRID_COLUMNS + _grid_column(c.lon)
        self.point_order = np.argsort(keys, kind="stable").astype(np.int32)
        self.point_keys = keys[self.point_order]
        self._build_footprint_grid()
        self._groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}

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
        row0 = _grid_row(bounds[rows, 1])
        row1 = _grid_row(bounds[rows, 3])
        col0 = _grid_column(bounds[rows, 0])
        col1 = _grid_column(bounds[rows, 2])
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

    def rows_of(self, feed_ids: Sequence[str]) -> np.ndarray:
        """Rows of the ids present in this snapshot (absent ids are skipped)."""
        if not feed_ids or not self.size:
            return np.empty(0, dtype=np.int64)
        wanted = np.array(feed_ids, dtype=ID_DTYPE)
        positions = np.minimum(np.searchsorted(self.columns.ids, wanted), self.size - 1)
        return positions[self.columns.ids[positions] == wanted]

    def points_in_box(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Rows whose position lies in the lon/lat box (edges included), in grid order."""
        found = []
        for part in _split_antimeridian(*box):
            first, last = _cell_key_ranges(part)
            starts = np.searchsorted(self.point_keys, first, side="left")
            ends = np.searchsorted(self.point_keys, last, side="right")
            candidates = self.point_order[_concat_ranges(starts, ends)]
            lon = self.columns.lon[candidates]
            lat = self.columns.lat[candidates]
            inside = (lon >= part[0]) & (lon <= part[2]) & (lat >= part[1]) & (lat <= part[3])
            found.append(candidates[inside])
        return np.concatenate(found)  # each point sits in one cell: no duplicates

    def footprints_touching(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Rows whose footprint bounds intersect the box, ascending."""
        found = [self.oversized]
        for part in _split_antimeridian(*box):
            first, last = _cell_key_ranges(part)
            starts = np.searchsorted(self.footprint_keys, first, side="left")
            ends = np.searchsorted(self.footprint_keys, last, side="right")
            found.append(self.footprint_rows[_concat_ranges(starts, ends)])
        candidates = np.unique(np.concatenate(found))
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
        candidates = self.footprints_touching((lon, lat, lon, lat))
        if candidates.size == 0:
            return candidates
        polygons, coverage = self.footprint_shapes(candidates)
        seen = shapely.intersects_xy(polygons, lon, lat) | shapely.intersects_xy(coverage, lon, lat)
        return candidates[seen]

    def _rows_in_geometry(self, geometry: shapely.Geometry, relation: str) -> np.ndarray:
        shapely.prepare(geometry)
        box = tuple(float(value) for value in geometry.bounds)
        points = self.points_in_box(box)  # type: ignore[arg-type]
        inside = points[
            shapely.intersects_xy(geometry, self.columns.lon[points], self.columns.lat[points])
        ]
        if relation == "within":
            return inside
        candidates = self.footprints_touching(box)  # type: ignore[arg-type]
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
        distances = None
        if query.near is not None:
            lon, lat, metres = query.near
            distances = geodesic_distance_m(
                lon, lat, self.columns.lon[rows], self.columns.lat[rows]
            )
            close = distances <= metres
            rows, distances = rows[close], distances[close]
        return Matches(rows, distances)

    def _filter_attributes(
        self,
        rows: np.ndarray | None,
        query: IndexQuery,
        vocabularies: tuple[Vocabulary, Vocabulary],
    ) -> np.ndarray:
        c = self.columns
        owners, tags = vocabularies
        wanted = _wanted_codes(query, owners, tags)
        if rows is None and wanted and all(name in self._groups for name in wanted):
            # start from the rarest value asked for instead of scanning every row
            rows = min((self.rows_with(name, code) for name, code in wanted.items()), key=len)
        view = slice(None) if rows is None else rows
        mask = np.ones(self.size if rows is None else rows.shape[0], dtype=bool)
        if not query.include_retired:
            mask &= ~c.retired[view]
        if query.owner is not None:
            mask &= c.owner[view] == wanted["owner"]
        if query.kind is not None:
            mask &= c.kind[view] == wanted["kind"]
        if query.industry is not None:
            mask &= c.industry[view] == wanted["industry"]
        if query.type_code is not None:
            mask &= c.type_code[view] == wanted["type_code"]
        if query.region is not None:
            scale = 10 ** (8 - len(query.region))
            low = int(query.region) * scale
            region = c.region[view]
            mask &= (region >= low) & (region < low + scale)
        if query.sharing is not None:
            mask &= c.sharing[view] == wanted["sharing"]
        if query.status is not None:
            mask &= c.status[view] == wanted["status"]
        if query.tag is not None:
            tagged = np.zeros(self.size, dtype=bool)
            if "tag" in self._groups:
                tagged[self.rows_with("tag", wanted["tag"])] = True
            else:
                tagged[c.tag_rows[c.tag_codes == wanted["tag"]]] = True
            mask &= tagged[view]
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
        wanted["kind"] = _KIND_CODE[query.kind]
    if query.industry is not None:
        wanted["industry"] = int(query.industry)
    if query.type_code is not None:
        wanted["type_code"] = int(query.type_code)
    if query.sharing is not None:
        wanted["sharing"] = _SHARING_CODE[query.sharing]
    if query.status is not None:
        wanted["status"] = _STATUS_CODE[query.status]
    if query.tag is not None:
        code = tags.lookup(query.tag)
        wanted["tag"] = -1 if code is None else code
    return wanted


def _is_sorted(values: np.ndarray) -> bool:
    return values.shape[0] < 2 or bool(np.all(values[:-1] <= values[1:]))


def merge_columns(base: Snapshot, incoming: Columns) -> Snapshot:
    """A new snapshot: ``base`` plus ``incoming``; for an id in both, the higher revision wins."""
    if base.size == 0:
        return Snapshot(incoming)
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
            incoming = incoming.take(np.flatnonzero(~stale))
            replaced = base.rows_of(incoming.ids.astype(str).tolist())
    keep = np.ones(base.size, dtype=bool)
    keep[replaced] = False
    kept = base.columns.take(np.flatnonzero(keep)) if replaced.size else base.columns
    return Snapshot(Columns.concat(kept, incoming))


def merge_snapshot(
    base: Snapshot, records: Sequence[FeedRecord], owners: Vocabulary, tags: Vocabulary
) -> Snapshot:
    """A new snapshot: ``base`` with ``records`` replacing (or adding to) its rows."""
    return merge_columns(base, Columns.from_records(records, owners, tags))


# ---------------------------------------------------------------------------- the index


_ID_WIDTH = np.dtype(ID_DTYPE).itemsize


@dataclass
class _Delta:
    records: dict[str, FeedRecord] = field(default_factory=dict)
    snapshot: Snapshot | None = None


class FeedIndex:
    """The process-wide index: a base snapshot plus recent writes. A Runtime component."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession] | None = None) -> None:
        self.sessions = sessions
        self.owners = Vocabulary()
        self.tags = Vocabulary()
        self._base = Snapshot(Columns.empty())
        self._superseded = np.zeros(0, dtype=bool)
        self._delta = _Delta()
        self._merge_lock = asyncio.Lock()
        self._merge_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        # Counts the times the index's content changed: caches of feed facts elsewhere (the
        # hooks' path lookups) compare it to know that nothing moved since they looked.
        self.changes = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.sessions is not None:
            await self.load(self.sessions)
        self.ready.set()

    async def stop(self) -> None:
        for task in [self._merge_task, *self._background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def load(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Replaces the index with every feed in the database (retired ones included)."""
        started = time.perf_counter()
        parts: list[Columns] = []
        async with sessions() as session:
            result = await session.stream(
                select(*RECORD_COLUMNS).execution_options(yield_per=LOAD_CHUNK)
            )
            async for chunk in result.mappings().partitions(LOAD_CHUNK):
                records = [FeedRecord.from_row(row) for row in chunk]
                parts.append(Columns.from_records(records, self.owners, self.tags))
        base = await asyncio.to_thread(Snapshot, Columns.concat_all(parts))
        await asyncio.to_thread(base.prepare_groups)
        self._install_base(base, {})
        self.changes += 1
        log.info(
            "feed index loaded",
            extra={"feeds": base.size, "seconds": round(time.perf_counter() - started, 2)},
        )

    # ------------------------------------------------------------------ writes

    def __len__(self) -> int:
        return self._base.size - int(self._superseded.sum()) + len(self._delta.records)

    def revision_of(self, feed_id: str) -> int | None:
        record = self._delta.records.get(feed_id)
        if record is not None:
            return record.revision
        row = self._base.row_of(feed_id)
        return None if row is None else int(self._base.columns.revision[row])

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
            elif feed_id.isascii() and feed_id.isalnum() and len(feed_id) <= _ID_WIDTH:
                in_base.append(feed_id)  # anything else would be cut or padded by ID_DTYPE
        base = self._base
        if not in_base or not base.size:
            return found
        wanted = np.array(in_base, dtype=ID_DTYPE)
        positions = np.minimum(np.searchsorted(base.columns.ids, wanted), base.size - 1)
        present = base.columns.ids[positions] == wanted
        owners = self.owners.values
        owner_codes = base.columns.owner[positions].tolist()
        retired = base.columns.retired[positions].tolist()
        for feed_id, hit, owner, is_retired in zip(
            in_base, present.tolist(), owner_codes, retired, strict=True
        ):
            if hit:
                found[feed_id] = (owners[owner], is_retired)
        return found

    def apply(self, records: Iterable[FeedRecord]) -> None:
        """Makes committed writes visible. Older revisions than the known one are ignored."""
        changed = False
        for record in records:
            known = self.revision_of(record.id)
            if known is not None and known >= record.revision:
                continue
            row = self._base.row_of(record.id)
            if row is not None:
                self._superseded[row] = True
            self._delta.records[record.id] = record
            changed = True
        if changed:
            self.changes += 1
            self._delta.snapshot = None
            if len(self._delta.records) > DELTA_LIMIT:
                self._schedule_merge()

    def apply_event(self, event_data: Mapping[Any, Any]) -> None:
        """Applies one feed-metadata event (the scale-mode follower's entry point)."""
        self.apply([record_from_document(event_data)])

    async def apply_and_merge(self, records: Sequence[FeedRecord]) -> None:
        """For big batches: apply, then fold everything into a new base now."""
        self.apply(records)
        await self.merge()

    def columns_of(self, records: Sequence[FeedRecord]) -> Columns:
        """Records as columns in this index's vocabularies (for :meth:`apply_columns`)."""
        return Columns.from_records(records, self.owners, self.tags)

    async def apply_columns(self, incoming: Columns) -> None:
        """Folds a big batch of committed writes, prepared as columns, into a new base.

        Bulk imports prepare the columns while the database is still busy writing, so only
        the merge itself (sorting and grids, in a worker thread) follows the commit.
        """
        async with self._merge_lock:
            merged = await asyncio.to_thread(merge_columns, self._base, incoming)
            self._install_base(merged, self._delta.records)
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
        remaining = {
            feed_id: record
            for feed_id, record in delta.items()
            if (row := base.row_of(feed_id)) is None
            or int(base.columns.revision[row]) < record.revision
        }
        superseded = np.zeros(base.size, dtype=bool)
        superseded[base.rows_of(list(remaining))] = True
        self._base = base
        self._superseded = superseded
        self._delta = _Delta(remaining)
        if base.size > DELTA_LIMIT:
            task = asyncio.get_running_loop().create_task(self._prepare(base))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _prepare(self, base: Snapshot) -> None:
        if base is self._base:  # a newer base may have replaced it already
            await asyncio.to_thread(base.prepare_groups)

    # ------------------------------------------------------------------ reads

    def _delta_snapshot(self) -> Snapshot | None:
        if not self._delta.records:
            return None
        if self._delta.snapshot is None:
            self._delta.snapshot = Snapshot(
                Columns.from_records(list(self._delta.records.values()), self.owners, self.tags)
            )
        return self._delta.snapshot

    def _all_matches(self, query: IndexQuery) -> list[tuple[Snapshot, Matches]]:
        vocabularies = (self.owners, self.tags)
        base_matches = self._base.match(query, vocabularies=vocabularies)
        if self._superseded.any():
            live = ~self._superseded[base_matches.rows]
            base_matches = Matches(
                base_matches.rows[live],
                None if base_matches.distances is None else base_matches.distances[live],
            )
        found = [(self._base, base_matches)]
        delta = self._delta_snapshot()
        if delta is not None:
            found.append((delta, delta.match(query, vocabularies=vocabularies)))
        return found

    def search(self, query: IndexQuery, *, limit: int, cursor: str | None = None) -> IndexPage:
        """One page of matching feed ids: nearest first for ``near``, else in id order."""
        after = decode_cursor(cursor) if cursor else None
        found = self._all_matches(query)
        total = sum(matches.rows.shape[0] for _, matches in found)
        if query.near is not None:
            return self._nearest_page(found, total, limit, after)
        # Each snapshot's rows ascend in id order: only the head after the cursor is needed.
        heads = []
        for snapshot, matches in found:
            rows = matches.rows
            if after is not None:
                start = np.searchsorted(snapshot.columns.ids, after[0].encode(), side="right")
                rows = rows[rows >= start]
            if rows.shape[0] > limit + 1:  # the lowest rows are the lowest ids: no full sort
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
    ) -> IndexPage:
        ids = np.concatenate([snapshot.columns.ids[matches.rows] for snapshot, matches in found])
        distances = np.concatenate([matches.distances for _, matches in found])  # type: ignore[misc]
        if after is not None:
            last_id, last_distance = after
            if last_distance is None:
                raise InvalidCursor("the cursor does not belong to a near search")
            later = (distances > last_distance) | (
                (distances == last_distance) & (ids > last_id.encode())
            )
            ids, distances = ids[later], distances[later]
        more = ids.shape[0] > limit
        if more:  # only the page needs sorting: keep what is no farther than the limit-th
            kth = np.partition(distances, limit - 1)[limit - 1]
            close = distances <= kth
            ids, distances = ids[close], distances[close]
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


def gather_columns(
    parts: Sequence[tuple[Columns, np.ndarray]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The named columns of the given rows of every part, one array each."""

    def gather(name: str) -> np.ndarray:
        pieces = [getattr(columns, name)[rows] for columns, rows in parts]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    return {name: gather(name) for name in names}


def close_pairs(
    lon: np.ndarray, lat: np.ndarray, metres: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of points at most ``metres`` apart, with its geodesic distance.

    Points go into cells at least ``metres`` wide; only the own and the neighbouring cells
    are compared, so the work follows the number of close points, not n squared.
    """
    count = lon.shape[0]
    empty = np.empty(0, dtype=np.int64)
    if count < 2:
        return empty, empty, np.empty(0)
    widest = min(float(np.abs(lat).max()), 89.0)
    cell_lat = metres / 110_000.0 * 1.02
    cell_lon = cell_lat / np.cos(np.radians(widest))
    cell_x = np.floor(lon / cell_lon).astype(np.int64)
    cell_y = np.floor(lat / cell_lat).astype(np.int64)
    stride = np.int64(1) << 32
    keys = cell_y * stride + cell_x
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    firsts, seconds = [], []
    for dy, dx in ((0, 0), (0, 1), (1, -1), (1, 0), (1, 1)):
        wanted = keys + dy * stride + dx
        starts = np.searchsorted(sorted_keys, wanted, side="left")
        ends = np.searchsorted(sorted_keys, wanted, side="right")
        first = np.repeat(np.arange(count), np.maximum(ends - starts, 0))
        second = order[_concat_ranges(starts, ends)]
        if dy == 0 and dx == 0:
            keep = first < second
            first, second = first[keep], second[keep]
        firsts.append(first)
        seconds.append(second)
    first = np.concatenate(firsts)
    second = np.concatenate(seconds)
    distance = geodesic_distance_m(lon[first], lat[first], lon[second], lat[second])
    close = distance <= metres
    low = np.minimum(first[close], second[close])
    high = np.maximum(first[close], second[close])
    return low, high, distance[close]


def record_from_document(document: Mapping[Any, Any]) -> FeedRecord:
    """A record from a feed document (an event's data or the API's JSON)."""
    gb = document.get("gb28181") or {}
    fov = document.get("fov")
    coverage = document.get("coverage")
    lon, lat = document["location"]["coordinates"][:2]
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
