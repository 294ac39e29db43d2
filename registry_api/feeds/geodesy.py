"""Metric geometry on the WGS84 ellipsoid: distances, search boxes and field-of-view polygons.

Distances shown and compared are true geodesics (pyproj ``Geod.inv``); near searches rank
their candidates by a local distance first, whose error is bounded, and compute the geodesic
only where it can decide something (:func:`near_distances`).

Field-of-view polygons are built in a local frame around the camera: a point ``r`` metres
away at bearing ``b`` is offset by ``(r sin b, r cos b)`` metres east/north, scaled by the
ellipsoid's radii of curvature and walked on a unit sphere (see :func:`offset_points`).
Compared with the exact geodesic (``Geod.fwd``) the vertices are off by under 0.1 mm at
300 m and under 10 cm at 10 km (tests/unit/test_spatial_geodesy.py), which is why ranges
are capped at 10 km.

Every function is vectorised with numpy; the scalar helpers call the vector ones, so the
polygons the spatial index tests against are exactly the ones the API shows.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from pyproj import Geod

WGS84_A = 6_378_137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)
GEOD = Geod(ellps="WGS84")

MAX_FOV_RANGE_M = 10_000.0
# A sector is the apex plus ARC_POINTS points on its arc; a 360 degree view is a ring of
# ARC_POINTS - 1 distinct points (the sagitta is under 0.5 % of the range).
ARC_POINTS = 33

FloatArray = np.ndarray


def _radii(lat_rad: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Meridional (M) and prime-vertical (N) radii of curvature at the given latitudes."""
    sin2 = np.sin(lat_rad) ** 2
    w = np.sqrt(1.0 - WGS84_E2 * sin2)
    meridional = WGS84_A * (1.0 - WGS84_E2) / (w**3)
    prime_vertical = WGS84_A / w
    return meridional, prime_vertical


def offset_points(
    lon: FloatArray, lat: FloatArray, east_m: FloatArray, north_m: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Lon/lat of the points ``east_m``/``north_m`` metres from (lon, lat); arrays broadcast.

    The offsets are scaled by the ellipsoid's radii of curvature at (lon, lat), which gets the
    first order exact, and then walked as a great circle on a unit sphere whose latitude is the
    geodetic latitude: that reproduces the geodesic's convergence (the second order) too.
    """
    lat_rad = np.radians(lat)
    meridional, prime_vertical = _radii(lat_rad)
    north_angle = north_m / meridional
    east_angle = east_m / prime_vertical
    travelled = np.hypot(north_angle, east_angle)
    bearing = np.arctan2(east_angle, north_angle)
    sin_lat, cos_lat = np.sin(lat_rad), np.cos(lat_rad)
    sin_travelled, cos_travelled = np.sin(travelled), np.cos(travelled)
    new_lat_rad = np.arcsin(sin_lat * cos_travelled + cos_lat * sin_travelled * np.cos(bearing))
    delta_lon = np.arctan2(
        np.sin(bearing) * sin_travelled * cos_lat, cos_travelled - sin_lat * np.sin(new_lat_rad)
    )
    return lon + np.degrees(delta_lon), np.degrees(new_lat_rad)


def _arc_bearings(heading: FloatArray, angle: FloatArray) -> FloatArray:
    """(n, ARC_POINTS) bearings, clockwise from north, from the left edge to the right edge."""
    steps = np.linspace(0.0, 1.0, ARC_POINTS)
    start = heading - angle / 2.0
    return start[:, None] + angle[:, None] * steps[None, :]


def fov_rings(
    lon: FloatArray, lat: FloatArray, heading: FloatArray, angle: FloatArray, range_m: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Closed exterior rings of the field-of-view polygons, split by shape.

    Returns ``(sectors, circles)``: ``sectors`` has shape (n, ARC_POINTS + 2, 2) for the views
    narrower than 360 degrees (apex, arc, apex), ``circles`` (m, ARC_POINTS, 2) for the full
    views (the arc's first and last points coincide). Rows keep the input order within each
    group; use ``angle >= 360`` to tell which input went where.
    """
    lon, lat, heading, angle, range_m = (
        np.asarray(value, dtype=np.float64) for value in (lon, lat, heading, angle, range_m)
    )
    full = angle >= 360.0
    bearings = np.radians(_arc_bearings(heading, np.minimum(angle, 360.0)))
    east = range_m[:, None] * np.sin(bearings)
    north = range_m[:, None] * np.cos(bearings)
    arc_lon, arc_lat = offset_points(lon[:, None], lat[:, None], east, north)
    # A ring goes counter-clockwise on the map (right-hand rule of RFC 7946): reverse the arc.
    arc = np.stack([arc_lon[:, ::-1], arc_lat[:, ::-1]], axis=-1)
    circles = arc[full].copy()
    circles[:, -1, :] = circles[:, 0, :]
    part = ~full
    apex = np.stack([lon[part], lat[part]], axis=-1)[:, None, :]
    sectors = np.concatenate([apex, arc[part], apex], axis=1)
    return sectors, circles


def fov_ring_arrays(
    lon: FloatArray,
    lat: FloatArray,
    heading: FloatArray,
    angle: FloatArray,
    range_m: FloatArray,
    *,
    decimals: int | None = None,
) -> list[FloatArray]:
    """The closed exterior ring of each field of view, in input order ((k, 2) arrays),
    rounded to ``decimals`` if given (all rings in one numpy call, not one call a ring)."""
    angle = np.asarray(angle, dtype=np.float64)
    sectors, circles = fov_rings(lon, lat, heading, angle, range_m)
    if decimals is not None:
        sectors, circles = np.round(sectors, decimals), np.round(circles, decimals)
    full = angle >= 360.0
    groups = {False: iter(sectors), True: iter(circles)}
    return [next(groups[bool(is_full)]) for is_full in full]


def fov_polygons(
    lon: FloatArray, lat: FloatArray, heading: FloatArray, angle: FloatArray, range_m: FloatArray
) -> np.ndarray:
    """Shapely polygons of the fields of view, in input order (an object array)."""
    angle = np.asarray(angle, dtype=np.float64)
    sectors, circles = fov_rings(lon, lat, heading, angle, range_m)
    result = np.empty(angle.shape[0], dtype=object)
    full = angle >= 360.0
    if sectors.shape[0]:
        result[~full] = shapely.polygons(sectors)
    if circles.shape[0]:
        result[full] = shapely.polygons(circles)
    return result


def fov_polygon(
    lon: float, lat: float, heading: float, angle: float, range_m: float
) -> shapely.Polygon:
    polygon = fov_polygons(
        np.array([lon]),
        np.array([lat]),
        np.array([heading]),
        np.array([angle]),
        np.array([range_m]),
    )[0]
    return polygon


# Where the local frame below may decide a point against a field-of-view polygon alone. The
# frame's own error against the polygon's vertices is under 0.2 % of the distance and 0.1
# degree of bearing at 10 km and 70 degrees of latitude; the margins are five times that.
SURE_DISTANCE_MARGIN = 0.01
SURE_BEARING_MARGIN_DEG = 1.0
SURE_MAX_ABS_LAT = 70.0
SURE_MAX_ABS_LON = 179.5  # a view that may cross the antimeridian is left to its polygon
SURE_MIN_DISTANCE_M = 0.01
UNSURE = -1


def fov_verdicts(
    lon: FloatArray,
    lat: FloatArray,
    heading: FloatArray,
    angle: FloatArray,
    range_m: FloatArray,
    point_lon: float,
    point_lat: float,
) -> np.ndarray:
    """Whether the point lies in each field of view's polygon, where that is sure without it.

    Returns an int8 array: 1 inside, 0 outside, ``UNSURE`` (-1) where only the polygon of
    :func:`fov_polygons` can tell: near its edges, its apex and its arc, far from the equator,
    or where the view may cross the antimeridian. The point is placed in the camera's local
    frame (metres east and north through the radii of curvature: an affine map of lon/lat,
    so the polygon's straight edges stay straight in it). The polygon's arc is a chain of
    chords, which all lie between the arc's radius and that radius times the cosine of half
    a chord's angle.
    """
    lon, lat, heading, angle, range_m = (
        np.asarray(value, dtype=np.float64) for value in (lon, lat, heading, angle, range_m)
    )
    lat_rad = np.radians(lat)
    meridional, prime_vertical = _radii(lat_rad)
    delta_lon = (point_lon - lon + 180.0) % 360.0 - 180.0
    north = np.radians(point_lat - lat) * meridional
    east = np.radians(delta_lon) * prime_vertical * np.cos(lat_rad)
    distance = np.hypot(east, north)
    full = angle >= 360.0
    span = np.minimum(angle, 360.0)
    off_heading = np.abs((np.degrees(np.arctan2(east, north)) - heading + 180.0) % 360.0 - 180.0)
    within_angle = full | (off_heading <= span / 2.0 - SURE_BEARING_MARGIN_DEG)
    beyond_angle = ~full & (off_heading >= span / 2.0 + SURE_BEARING_MARGIN_DEG)
    inner = range_m * np.cos(np.radians(span / (2.0 * (ARC_POINTS - 1))))
    inside = within_angle & (distance <= inner * (1.0 - SURE_DISTANCE_MARGIN))
    outside = beyond_angle | (distance >= range_m * (1.0 + SURE_DISTANCE_MARGIN))
    decidable = (
        (np.abs(lat) <= SURE_MAX_ABS_LAT)
        & (np.abs(lon) <= SURE_MAX_ABS_LON)
        & (distance >= SURE_MIN_DISTANCE_M)
    )
    verdicts = np.full(lon.shape, UNSURE, dtype=np.int8)
    verdicts[decidable & inside] = 1
    verdicts[decidable & outside] = 0
    return verdicts


def fov_bounds(
    lon: FloatArray, lat: FloatArray, heading: FloatArray, angle: FloatArray, range_m: FloatArray
) -> FloatArray:
    """(n, 4) min lon, min lat, max lon, max lat enclosing each field of view.

    Computed from the apex, the two ends of the arc and the compass points (N, E, S, W) the
    arc passes: the true arc's box, which holds the polygon (whose arc is a chain of chords).
    Seven points a view instead of the polygon's 35.
    """
    lon, lat, heading, angle, range_m = (
        np.asarray(value, dtype=np.float64) for value in (lon, lat, heading, angle, range_m)
    )
    start = heading - np.minimum(angle, 360.0) / 2.0
    cardinal = np.array([0.0, 90.0, 180.0, 270.0])
    # a compass point is on the arc when its bearing, counted from the arc's start, is within it
    on_arc = ((cardinal[None, :] - start[:, None]) % 360.0) <= angle[:, None]
    bearings = np.concatenate(
        [
            start[:, None],
            (start + angle)[:, None],
            np.where(on_arc, cardinal[None, :], start[:, None]),
        ],
        axis=1,
    )
    radians = np.radians(bearings)
    arc_lon, arc_lat = offset_points(
        lon[:, None],
        lat[:, None],
        range_m[:, None] * np.sin(radians),
        range_m[:, None] * np.cos(radians),
    )
    all_lon = np.concatenate([arc_lon, lon[:, None]], axis=1)
    all_lat = np.concatenate([arc_lat, lat[:, None]], axis=1)
    # On the ellipsoid a circle's extremes sit a hair off the compass bearings (millimetres
    # at kilometres): pad by 1 cm per kilometre of range.
    pad = range_m * 1e-5 / (110_000.0 * np.maximum(np.cos(np.radians(np.abs(lat) + 1.0)), 1e-6))
    return np.column_stack(
        [
            all_lon.min(axis=1) - pad,
            all_lat.min(axis=1) - pad,
            all_lon.max(axis=1) + pad,
            all_lat.max(axis=1) + pad,
        ]
    )


def geodesic_distance_m(
    lon1: FloatArray | float, lat1: FloatArray | float, lon2: FloatArray, lat2: FloatArray
) -> FloatArray:
    """True distances in metres on the WGS84 ellipsoid from point(s) 1 to points 2."""
    lon2 = np.asarray(lon2, dtype=np.float64)
    lat2 = np.asarray(lat2, dtype=np.float64)
    if lon2.size == 0:
        return np.empty(0, dtype=np.float64)
    lon1_array = np.broadcast_to(np.asarray(lon1, dtype=np.float64), lon2.shape)
    lat1_array = np.broadcast_to(np.asarray(lat1, dtype=np.float64), lat2.shape)
    _, _, distance = GEOD.inv(lon1_array, lat1_array, lon2, lat2)
    return np.asarray(distance, dtype=np.float64)


# Near searches order their candidates by local distances (:func:`local_distance_m`) and
# compute true geodesics only where the order or the radius needs them: within the range the
# error bound below was measured over. Beyond this latitude, or this radius (a box's farthest
# candidates lie about 1.43 radii away: under 30 km), they take true geodesics throughout.
LOCAL_DISTANCE_MAX_LAT = 80.0
LOCAL_DISTANCE_MAX_RADIUS_M = 20_000.0
# What a local distance may be off by, relative and absolute: measured under 1.4e-5 and 3e-9
# m up to 30 km at |lat| <= 80 (tests/unit/test_spatial_geodesy.py); the bound keeps a margin
# of seventy.
LOCAL_DISTANCE_TOLERANCE = 1e-3
LOCAL_DISTANCE_SLACK_M = 1e-3


def local_distance_m(
    lon1: FloatArray | float, lat1: FloatArray | float, lon2: FloatArray, lat2: FloatArray
) -> FloatArray:
    """Distances in metres from point(s) 1 in a local frame: the longitude and latitude
    differences scaled by the ellipsoid's radii of curvature at each pair's mid-latitude.
    Within :func:`local_distance_error_m` of the true geodesic for the distances and latitudes
    near searches take, at a twentieth of its cost."""
    mid = np.radians((lat2 + lat1) / 2.0)
    meridional, prime_vertical = _radii(mid)
    east = np.radians((lon2 - lon1 + 180.0) % 360.0 - 180.0) * prime_vertical * np.cos(mid)
    north = np.radians(lat2 - lat1) * meridional
    return np.asarray(np.hypot(east, north), dtype=np.float64)


def local_distance_error_m(distances: FloatArray | float) -> FloatArray | float:
    """How far the true geodesic may lie from a local distance (either way)."""
    return distances * LOCAL_DISTANCE_TOLERANCE + LOCAL_DISTANCE_SLACK_M


def near_distances(
    lon: float, lat: float, lons: FloatArray, lats: FloatArray, metres: float
) -> tuple[FloatArray, np.ndarray | None]:
    """Distances from (lon, lat) to the points, good enough to tell which lie within
    ``metres``: true geodesics for the points whose local distance cannot tell (those within
    its error of ``metres``), local distances for the others; and which are true (None: all
    of them, where the local frame is not used). A point is within ``metres`` exactly when
    its distance here is."""
    if abs(lat) > LOCAL_DISTANCE_MAX_LAT or metres > LOCAL_DISTANCE_MAX_RADIUS_M or not lons.size:
        return geodesic_distance_m(lon, lat, lons, lats), None
    distances = local_distance_m(lon, lat, lons, lats)
    exact = np.abs(distances - metres) <= local_distance_error_m(distances)
    if exact.any():
        distances[exact] = geodesic_distance_m(lon, lat, lons[exact], lats[exact])
    return distances, exact


def radius_box(lon: float, lat: float, metres: float) -> tuple[float, float, float, float]:
    """A lon/lat box that surely contains every point within ``metres`` of (lon, lat).

    Padded by 1 % + 1 m against the curvature the local formulas ignore; near the poles the
    box spans every longitude.
    """
    padded = metres * 1.01 + 1.0
    lat_rad = math.radians(lat)
    meridional, prime = (float(value) for value in _radii(np.array(lat_rad)))
    dlat = math.degrees(padded / meridional)
    min_lat = max(-90.0, lat - dlat)
    max_lat = min(90.0, lat + dlat)
    widest = max(abs(min_lat), abs(max_lat))
    if widest >= 89.0:
        return -180.0, min_lat, 180.0, max_lat
    dlon = math.degrees(padded / (prime * math.cos(math.radians(widest))))
    if dlon >= 180.0:
        return -180.0, min_lat, 180.0, max_lat
    return lon - dlon, min_lat, lon + dlon, max_lat


def geodesic_area_m2(geometry: shapely.Geometry) -> float:
    """Area in square metres of a lon/lat polygon on the ellipsoid."""
    if geometry.is_empty:
        return 0.0
    area, _ = GEOD.geometry_area_perimeter(geometry)
    return abs(float(area))
