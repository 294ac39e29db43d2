"""What a search asks and what it answers: the query, the matching rows, a page and its
opaque cursor."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import shapely


class InvalidCursor(ValueError):
    pass


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
    placed: bool | None = None  # True: only feeds with a position; False: only unplaced ones
    feed_ids: tuple[str, ...] | None = None  # only these feeds (a catalog-tree node's)


@dataclass
class Matches:
    """Rows of one snapshot that match (any order); distances aligned for ``near``."""

    rows: np.ndarray
    distances: np.ndarray | None = None
    # For ``near``, which distances are true geodesics; the others are local distances
    # (``geodesy.near_distances``), made true before a page shows or compares them. None:
    # every one is true.
    exact: np.ndarray | None = None

    def only(self, keep: np.ndarray) -> Matches:
        """The matches ``keep`` (a mask or indices of the rows) selects."""
        return Matches(
            self.rows[keep],
            None if self.distances is None else self.distances[keep],
            None if self.exact is None else self.exact[keep],
        )


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
