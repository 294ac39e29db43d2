"""What the index keeps of one feed: the record, its columns in the registry, and the codes
of its categorical attributes."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import shapely

KINDS = ("camera", "sensor")
SHARING = ("unconditional", "conditional", "not_shared")
STATUSES = ("online", "offline", "unknown")
KIND_CODE = {value: code for code, value in enumerate(KINDS)}
SHARING_CODE = {value: code for code, value in enumerate(SHARING)}
STATUS_CODE = {value: code for code, value in enumerate(STATUSES)}
ID_DTYPE = "S26"
# The position of an unplaced feed: NaN fails every spatial comparison, so such a feed is in
# no box, near nothing and on no map, while every other filter still finds it.
NOWHERE = float("nan")


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
    lon: float  # NOWHERE when unplaced
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
            lon=NOWHERE if row["lon"] is None else row["lon"],
            lat=NOWHERE if row["lat"] is None else row["lat"],
            fov=(
                (row["fov_heading"], row["fov_angle"], row["fov_range_m"])
                if row["fov_heading"] is not None
                else None
            ),
            coverage=shapely.geometry.shape(coverage) if coverage else None,
        )


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
