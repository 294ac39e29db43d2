"""Close pairs of points: the duplicate finder's candidates, in time that follows the number
of close points rather than n squared."""

from __future__ import annotations

import numpy as np

from registry_api.feeds.geodesy import geodesic_distance_m
from registry_api.feeds.index.grid import concat_ranges


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
        second = order[concat_ranges(starts, ends)]
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
