"""The index's columns: per-feed numpy arrays of the searchable attributes, built from
records (or, in the bulk helper process, from validated features), and gathered for reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from registry_api.feeds.geodesy import fov_bounds
from registry_api.feeds.index.records import (
    ID_DTYPE,
    KIND_CODE,
    SHARING_CODE,
    STATUS_CODE,
    FeedRecord,
    Vocabulary,
)


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
            kind=np.fromiter((KIND_CODE[record.kind] for record in records), np.int8, count),
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
                (SHARING_CODE[record.sharing] for record in records), np.int8, count
            ),
            status=np.fromiter((STATUS_CODE[record.status] for record in records), np.int8, count),
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
    def interleave(base: Columns, kept: np.ndarray | None, incoming: Columns) -> Columns:
        """The rows of ``base`` at ``kept`` (every row when None) and the rows of ``incoming``,
        in id order. Both must be sorted by id and share no id. Each column is written once,
        straight into its place: concatenating and then sorting made two copies of every
        column, and at a million feeds the second was the peak of a bulk import."""
        base_ids = base.ids if kept is None else base.ids[kept]
        kept_count = base_ids.shape[0]
        total = kept_count + len(incoming)
        # each incoming row goes before the kept rows with greater ids
        inserted_at = np.searchsorted(base_ids, incoming.ids) + np.arange(len(incoming))
        del base_ids
        from_incoming = np.zeros(total, dtype=bool)
        from_incoming[inserted_at] = True
        kept_at = np.flatnonzero(~from_incoming)
        del from_incoming

        def place(name: str) -> np.ndarray:
            old, new = getattr(base, name), getattr(incoming, name)
            placed = np.empty((total, *old.shape[1:]), dtype=np.result_type(old, new))
            placed[inserted_at] = new
            placed[kept_at] = old if kept is None else old[kept]
            return placed

        placed = {
            name: place(name)
            for name in Columns.__dataclass_fields__
            if name not in ("tag_rows", "tag_codes")
        }
        if kept is None:
            base_tags = np.ones(base.tag_rows.shape[0], dtype=bool)
            base_tag_rows = kept_at[base.tag_rows]
        else:
            ordinal = np.full(len(base), -1, dtype=np.int64)
            ordinal[kept] = np.arange(kept_count)
            tag_ordinal = ordinal[base.tag_rows]
            base_tags = tag_ordinal >= 0
            base_tag_rows = kept_at[tag_ordinal[base_tags]]
        placed["tag_rows"] = np.concatenate([base_tag_rows, inserted_at[incoming.tag_rows]]).astype(
            np.int32
        )
        placed["tag_codes"] = np.concatenate(
            [base.tag_codes[base_tags], incoming.tag_codes]
        ).astype(np.int32)
        return Columns(**placed)


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
        chosen.status = np.array([STATUS_CODE[status] for status in statuses], dtype=np.int8)
        chosen.owner = owner_codes[chosen.owner]
        chosen.tag_codes = tag_codes[chosen.tag_codes]
        return chosen


def _footprints(
    lon: np.ndarray, lat: np.ndarray, fov: np.ndarray, coverage: np.ndarray
) -> np.ndarray:
    bounds = np.full((lon.shape[0], 4), np.nan)
    has_fov = ~np.isnan(fov[:, 0]) & ~np.isnan(lon)  # an unplaced feed's view is nowhere
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


def gather_columns(
    parts: Sequence[tuple[Columns, np.ndarray]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The named columns of the given rows of every part, one array each."""

    def gather(name: str) -> np.ndarray:
        pieces = [getattr(columns, name)[rows] for columns, rows in parts]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    return {name: gather(name) for name in names}
