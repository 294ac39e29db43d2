"""Metric geometry: FOV vertices against the exact geodesic, search boxes, close pairs."""

from __future__ import annotations

import math

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_api.feeds.geodesy import (
    ARC_POINTS,
    GEOD,
    LOCAL_DISTANCE_MAX_LAT,
    LOCAL_DISTANCE_MAX_RADIUS_M,
    UNSURE,
    fov_bounds,
    fov_polygon,
    fov_polygons,
    fov_verdicts,
    geodesic_area_m2,
    geodesic_distance_m,
    local_distance_error_m,
    local_distance_m,
    near_distances,
    offset_points,
    radius_box,
)
from registry_api.feeds.index.proximity import close_pairs


@settings(max_examples=200, deadline=None)
@given(
    lon=st.floats(-179, 179),
    lat=st.floats(-80, 80),
    bearing=st.floats(0, 360),
    distance=st.floats(1, 10_000),
)
def test_fov_vertices_sit_where_the_exact_geodesic_puts_them(
    lon: float, lat: float, bearing: float, distance: float
) -> None:
    east = distance * math.sin(math.radians(bearing))
    north = distance * math.cos(math.radians(bearing))
    got_lon, got_lat = offset_points(
        np.array([lon]), np.array([lat]), np.array([east]), np.array([north])
    )
    want_lon, want_lat, _ = GEOD.fwd(lon, lat, bearing, distance)
    _, _, error = GEOD.inv(float(got_lon[0]), float(got_lat[0]), want_lon, want_lat)
    # under 10 cm at the 10 km cap, under a millimetre at a typical 300 m
    assert error <= 1e-3 + 1e-9 * distance**2


def test_a_sector_is_apex_then_arc_counter_clockwise_and_valid() -> None:
    polygon = fov_polygon(103.8343, 36.0611, 90.0, 60.0, 100.0)
    coordinates = list(polygon.exterior.coords)
    assert polygon.is_valid and polygon.exterior.is_ccw
    assert len(coordinates) == ARC_POINTS + 2
    assert coordinates[0] == coordinates[-1] == (103.8343, 36.0611)
    distances = geodesic_distance_m(
        103.8343,
        36.0611,
        np.array([c[0] for c in coordinates[1:-1]]),
        np.array([c[1] for c in coordinates[1:-1]]),
    )
    assert np.allclose(distances, 100.0, atol=1e-3)
    bearings, _, _ = GEOD.inv(
        np.full(ARC_POINTS, 103.8343),
        np.full(ARC_POINTS, 36.0611),
        np.array([c[0] for c in coordinates[1:-1]]),
        np.array([c[1] for c in coordinates[1:-1]]),
    )
    assert np.allclose(sorted(bearings % 360), np.linspace(60, 120, ARC_POINTS), atol=1e-4)


def test_view_areas_match_the_circle_sector_formula() -> None:
    for angle, reach in ((30, 50), (90, 150), (200, 80), (360, 300)):
        polygon = fov_polygon(103.8343, 36.0611, 45.0, angle, reach)
        expected = math.pi * reach**2 * angle / 360
        assert polygon.is_valid
        assert abs(geodesic_area_m2(polygon) - expected) / expected < 0.01, angle


def test_sectors_and_full_circles_keep_their_input_order() -> None:
    angles = np.array([360.0, 45.0, 360.0, 120.0])
    polygons = fov_polygons(
        np.full(4, 103.8),
        np.full(4, 36.06),
        np.array([0.0, 90.0, 180.0, 270.0]),
        angles,
        np.full(4, 50.0),
    )
    assert [len(p.exterior.coords) for p in polygons] == [
        ARC_POINTS,
        ARC_POINTS + 2,
        ARC_POINTS,
        ARC_POINTS + 2,
    ]


def test_view_bounds_hold_the_polygon_and_are_tight() -> None:
    random = np.random.default_rng(3)
    count = 500
    lon, lat = 103.8 + random.uniform(0, 0.1, count), 36.06 + random.uniform(0, 0.1, count)
    heading = random.uniform(0, 360, count)
    angle = np.where(random.random(count) < 0.2, 360.0, random.uniform(1, 359, count))
    reach = random.uniform(5, 5000, count)
    bounds = fov_bounds(lon, lat, heading, angle, reach)
    polygon_bounds = shapely.bounds(fov_polygons(lon, lat, heading, angle, reach))
    slack = reach / 111_000 * 0.01  # the arc bulges past its chords by under 1 % of the range
    assert np.all(bounds[:, :2] <= polygon_bounds[:, :2] + 1e-12)
    assert np.all(bounds[:, 2:] >= polygon_bounds[:, 2:] - 1e-12)
    assert np.all(polygon_bounds[:, :2] - bounds[:, :2] <= slack[:, None] * 2)
    assert np.all(bounds[:, 2:] - polygon_bounds[:, 2:] <= slack[:, None] * 2)


@settings(max_examples=100, deadline=None)
@given(lon=st.floats(-179.9, 179.9), lat=st.floats(-88, 88), metres=st.floats(1, 20_000))
def test_the_search_box_holds_every_point_within_the_radius(
    lon: float, lat: float, metres: float
) -> None:
    bearings = np.linspace(0, 360, 73)
    ends_lon, ends_lat, _ = GEOD.fwd(
        np.full(73, lon), np.full(73, lat), bearings, np.full(73, metres)
    )
    ends_lon = np.where(
        ends_lon - lon > 180,
        ends_lon - 360,
        np.where(ends_lon - lon < -180, ends_lon + 360, ends_lon),
    )
    min_lon, min_lat, max_lon, max_lat = radius_box(lon, lat, metres)
    assert (ends_lat >= min_lat).all() and (ends_lat <= max_lat).all()
    assert (ends_lon >= min_lon).all() and (ends_lon <= max_lon).all()


def test_close_pairs_equal_the_brute_force_pairs() -> None:
    random = np.random.default_rng(7)
    lon = 103.80 + random.uniform(0, 0.01, 1500)
    lat = 36.05 + random.uniform(0, 0.01, 1500)
    first, second, distance = close_pairs(lon, lat, 25.0)
    found = set(zip(first.tolist(), second.tolist(), strict=True))
    i, j = np.triu_indices(1500, k=1)
    brute = geodesic_distance_m(lon[i], lat[i], lon[j], lat[j])
    expected = {
        (a, b) for a, b, d in zip(i.tolist(), j.tolist(), brute.tolist(), strict=True) if d <= 25.0
    }
    assert found == expected and len(expected) > 50
    assert np.all(distance <= 25.0)


def _points_around_views(
    rng: np.random.Generator, count: int, max_abs_lat: float
) -> tuple[np.ndarray, ...]:
    """Random views and, for each, a point placed where a verdict is hardest: near its edges
    (bearings at the sector's sides), near its arc (distances around the range) and near its
    apex, besides points anywhere within 1.3 ranges."""
    lon = rng.uniform(-180, 180, count)
    lat = rng.uniform(-max_abs_lat, max_abs_lat, count)
    heading = rng.uniform(0, 360, count)
    angle = np.where(rng.random(count) < 0.15, 360.0, rng.uniform(0.5, 359.9, count))
    range_m = np.exp(rng.uniform(np.log(1.0), np.log(10_000.0), count))
    side = rng.choice([-1.0, 1.0], count)
    kind = rng.integers(0, 4, count)
    bearing = np.where(
        kind == 0,
        heading + side * (np.minimum(angle, 360) / 2 + rng.normal(0, 1.5, count)),
        heading + rng.uniform(-0.7, 0.7, count) * np.minimum(angle, 360),
    )
    reach = np.select(
        [kind == 1, kind == 2],
        [range_m * rng.uniform(0.97, 1.03, count), rng.uniform(0, 0.05, count)],
        range_m * rng.uniform(0, 1.3, count),
    )
    radians = np.radians(bearing)
    point_lon, point_lat = offset_points(lon, lat, reach * np.sin(radians), reach * np.cos(radians))
    point_lon = (point_lon + 180.0) % 360.0 - 180.0
    return lon, lat, heading, angle, range_m, point_lon, point_lat


def test_view_verdicts_agree_with_the_polygon_wherever_they_decide() -> None:
    rng = np.random.default_rng(5)
    lon, lat, heading, angle, range_m, point_lon, point_lat = _points_around_views(
        rng, 20_000, 89.0
    )
    polygons = fov_polygons(lon, lat, heading, angle, range_m)
    decided = 0
    for row in range(lon.shape[0]):
        verdict = fov_verdicts(
            lon[row : row + 1], lat[row : row + 1], heading[row : row + 1],
            angle[row : row + 1], range_m[row : row + 1], point_lon[row], point_lat[row],
        )[0]  # fmt: skip
        if verdict == UNSURE:
            continue
        decided += 1
        truth = bool(shapely.intersects_xy(polygons[row], point_lon[row], point_lat[row]))
        assert bool(verdict) == truth, (row, lon[row], lat[row], heading[row], angle[row])
    # the frame decides most points even when they are placed near the edges on purpose
    assert decided > 0.6 * lon.shape[0]


def test_view_verdicts_leave_the_apex_and_the_far_north_to_the_polygon() -> None:
    at_apex = fov_verdicts(
        np.array([103.8]), np.array([36.06]), np.array([90.0]), np.array([60.0]),
        np.array([200.0]), 103.8, 36.06,
    )  # fmt: skip
    far_north = fov_verdicts(
        np.array([20.0]), np.array([75.0]), np.array([0.0]), np.array([60.0]),
        np.array([200.0]), 20.0, 75.0005,
    )  # fmt: skip
    inside = fov_verdicts(
        np.array([103.8]), np.array([36.06]), np.array([0.0]), np.array([60.0]),
        np.array([200.0]), 103.8, 36.0605,
    )  # fmt: skip
    assert at_apex.tolist() == [UNSURE]  # on the polygon's boundary: intersects, by its rule
    assert far_north.tolist() == [UNSURE]
    assert inside.tolist() == [1]


def test_local_distances_stay_well_within_their_error_bound() -> None:
    """Near searches trust a local distance to within ``local_distance_error_m`` of the true
    geodesic: measured here over the latitudes and distances they use it for (the radius is
    at most 20 km, a search box's corner about 28 km), with a margin of ten at least."""
    rng = np.random.default_rng(28181)
    count = 400_000
    lat = rng.uniform(-LOCAL_DISTANCE_MAX_LAT, LOCAL_DISTANCE_MAX_LAT, count)
    lon = rng.uniform(-180, 180, count)  # the antimeridian included
    distance = rng.uniform(0, 30_000, count) * np.sqrt(rng.uniform(0, 1, count))
    distance[:1000] = rng.uniform(0, 1, 1000)  # a metre and less
    far_lon, far_lat, _ = GEOD.fwd(lon, lat, rng.uniform(0, 360, count), distance)
    true = geodesic_distance_m(lon, lat, far_lon, far_lat)
    local = local_distance_m(lon, lat, far_lon, far_lat)
    assert np.all(np.abs(local - true) <= np.asarray(local_distance_error_m(local)) / 10)


def test_near_distances_decide_the_radius_as_true_distances_do() -> None:
    """Points around the radius, closer to it than a local distance can tell: each is within
    the radius exactly when its true distance is, and those carry their true distance."""
    rng = np.random.default_rng(7)
    lon, lat, metres = 103.8343, 36.0611, 1_000.0
    azimuths = rng.uniform(0, 360, 2_000)
    offsets = rng.uniform(-2e-6, 2e-6, 2_000)  # metres off the radius: a micrometre or two
    far_lon, far_lat, _ = GEOD.fwd(
        np.full(2_000, lon), np.full(2_000, lat), azimuths, metres + offsets
    )
    true = geodesic_distance_m(lon, lat, far_lon, far_lat)
    local = local_distance_m(lon, lat, far_lon, far_lat)
    # the local distances alone would put some on the wrong side: what this test is about
    assert np.count_nonzero((local <= metres) != (true <= metres)) > 0
    distances, exact = near_distances(lon, lat, far_lon, far_lat, metres)
    assert exact is not None and exact.all()  # all within the error of the radius
    assert np.array_equal(distances <= metres, true <= metres)
    assert np.array_equal(distances, true)
    # far from the radius the local distance stands; near the poles only true ones are used
    inner_lon, inner_lat, _ = GEOD.fwd(lon, lat, 45.0, 400.0)
    distances, exact = near_distances(
        lon, lat, np.array([inner_lon]), np.array([inner_lat]), metres
    )
    assert exact is not None and not exact[0] and abs(distances[0] - 400.0) < 0.01
    distances, exact = near_distances(
        lon, lat, np.array([inner_lon]), np.array([inner_lat]), LOCAL_DISTANCE_MAX_RADIUS_M + 1
    )  # a radius beyond the range the local distances' bound was measured over
    assert exact is None
    polar_lon, polar_lat, _ = GEOD.fwd(10.0, 85.0, 45.0, 400.0)
    distances, exact = near_distances(
        10.0, 85.0, np.array([polar_lon]), np.array([polar_lat]), metres
    )
    assert (
        exact is None
        and distances[0]
        == geodesic_distance_m(10.0, 85.0, np.array([polar_lon]), np.array([polar_lat]))[0]
    )
