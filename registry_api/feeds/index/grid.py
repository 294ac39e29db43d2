"""The sorted-cell grid: positions in 0.01 degree cells (key = row * columns + column, keys
sorted), so a search box becomes one ``searchsorted`` range per grid row."""

from __future__ import annotations

import math

import numpy as np

CELL_DEGREES = 0.01
GRID_COLUMNS = 36_000
GRID_ROWS = 18_000
MAX_FOOTPRINT_CELLS = 256


def grid_row(lat: np.ndarray | float) -> np.ndarray:
    # an unplaced feed (NaN) goes to the first cell, where the exact test leaves it out
    degrees = np.nan_to_num(np.asarray(lat, dtype=np.float64), nan=-90.0)
    return np.clip(np.floor((degrees + 90.0) / CELL_DEGREES), 0, GRID_ROWS - 1).astype(np.int64)


def grid_column(lon: np.ndarray | float) -> np.ndarray:
    degrees = np.nan_to_num(np.asarray(lon, dtype=np.float64), nan=-180.0)
    return np.clip(np.floor((degrees + 180.0) / CELL_DEGREES), 0, GRID_COLUMNS - 1).astype(np.int64)


def row_of(lat: float) -> int:
    """:func:`grid_row` of one latitude in scalar arithmetic (the same NaN cell, floor and
    clip, so the same row): the array form costs ~20 us a call on a scalar."""
    if math.isnan(lat):
        return 0
    return min(max(math.floor((lat + 90.0) / CELL_DEGREES), 0), GRID_ROWS - 1)


def column_of(lon: float) -> int:
    """:func:`grid_column` of one longitude in scalar arithmetic."""
    if math.isnan(lon):
        return 0
    return min(max(math.floor((lon + 180.0) / CELL_DEGREES), 0), GRID_COLUMNS - 1)


def cell_key(lon: float, lat: float) -> int:
    """The grid key of one placed point."""
    return row_of(lat) * GRID_COLUMNS + column_of(lon)


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices start..end-1 of every range, concatenated, without a Python loop."""
    lengths = np.maximum(ends - starts, 0)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def split_antimeridian(
    min_lon: float, min_lat: float, max_lon: float, max_lat: float
) -> list[tuple[float, float, float, float]]:
    if max_lon - min_lon >= 360.0:
        return [(-180.0, min_lat, 180.0, max_lat)]
    if min_lon < -180.0:
        return [(min_lon + 360.0, min_lat, 180.0, max_lat), (-180.0, min_lat, max_lon, max_lat)]
    if max_lon > 180.0:
        return [(min_lon, min_lat, 180.0, max_lat), (-180.0, min_lat, max_lon - 360.0, max_lat)]
    return [(min_lon, min_lat, max_lon, max_lat)]


def cell_key_ranges(box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """First and last grid key of every grid row the box covers."""
    min_lon, min_lat, max_lon, max_lat = box
    rows = np.arange(row_of(min_lat), row_of(max_lat) + 1, dtype=np.int64)
    first = rows * GRID_COLUMNS + column_of(min_lon)
    last = rows * GRID_COLUMNS + column_of(max_lon)
    return first, last
