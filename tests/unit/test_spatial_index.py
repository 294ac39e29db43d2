"""The in-memory feed index gives exactly what a brute-force Shapely/geodesic scan gives.

Random feeds (seeded) around Lanzhou: cameras with sector, full-circle or no fields of view,
some with coverage polygons, sensors; some written in a merged base, some in the delta, some
updated or retired afterwards. Every query is checked against a scan over all live records.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, mapping

from registry_api.feeds.geodesy import GEOD, fov_polygon, geodesic_distance_m, local_distance_m
from registry_api.feeds.index.columns import Columns
from registry_api.feeds.index.grid import (
    GRID_COLUMNS,
    cell_key,
    column_of,
    grid_column,
    grid_row,
    row_of,
)
from registry_api.feeds.index.queries import IndexQuery, InvalidCursor
from registry_api.feeds.index.records import FeedRecord, Vocabulary
from registry_api.feeds.index.snapshot import Snapshot, merge_columns
from registry_api.feeds.spatial import FeedIndex

CENTRE = (103.80, 36.06)
OWNERS = ("lz-psb", "lz-tb", "lz-cmb", "lz-eeb")
TAGS = ("road", "river", "school", "bridge", "market")


def _random_record(rng: random.Random, serial: int) -> FeedRecord:
    lon = CENTRE[0] + rng.uniform(-0.03, 0.03)
    lat = CENTRE[1] + rng.uniform(-0.025, 0.025)
    kind = "camera" if rng.random() < 0.8 else "sensor"
    fov = None
    coverage = None
    if kind == "camera":
        shape = rng.random()
        if shape < 0.6:
            fov = (rng.uniform(0, 359.9), float(rng.randint(10, 120)), rng.uniform(20, 300))
        elif shape < 0.75:
            fov = (rng.uniform(0, 359.9), 360.0, rng.uniform(50, 400))
        if rng.random() < 0.1:
            coverage = Point(lon, lat).buffer(rng.uniform(0.0003, 0.002), quad_segs=4)
    return FeedRecord(
        id=f"01J{serial:023d}",
        revision=1,
        owner=rng.choice(OWNERS),
        kind=kind,
        industry=rng.choice(["00", "04", "05", "08"]) if kind == "camera" else None,
        type_code=rng.choice(["131", "132"]) if kind == "camera" else None,
        region=rng.choice(["62010200", "62010300", "62010400"]) if kind == "camera" else None,
        sharing=rng.choice(["unconditional", "conditional", "not_shared"]),
        status=rng.choice(["online", "offline", "unknown"]),
        retired=rng.random() < 0.05,
        tags=tuple(rng.sample(TAGS, rng.randint(0, 2))),
        name=f"{rng.choice(['North', 'South', 'Bridge', 'Market'])} camera {serial}",
        lon=lon,
        lat=lat,
        fov=fov,
        coverage=coverage,
    )


_SHAPES: dict[tuple[str, int], list[shapely.Geometry]] = {}


def _footprint_shapes(record: FeedRecord) -> list[shapely.Geometry]:
    """The record's view polygon (built by the function the API shows) and coverage."""
    cached = _SHAPES.get((record.id, record.revision))
    if cached is not None:
        return cached
    shapes = []
    if record.fov is not None:
        shapes.append(fov_polygon(record.lon, record.lat, *record.fov))
    if record.coverage is not None:
        shapes.append(record.coverage)
    _SHAPES[(record.id, record.revision)] = shapes
    return shapes


def _brute_force(records: dict[str, FeedRecord], query: IndexQuery) -> list[str]:
    """Ids in the order the API promises: nearest first for near, else by id."""
    found: list[tuple[float, str]] = []
    for record in records.values():
        if record.retired and not query.include_retired:
            continue
        if query.owner is not None and record.owner != query.owner:
            continue
        if query.kind is not None and record.kind != query.kind:
            continue
        if query.industry is not None and record.industry != query.industry:
            continue
        if query.type_code is not None and record.type_code != query.type_code:
            continue
        if query.region is not None and not (record.region or "").startswith(query.region):
            continue
        if query.sharing is not None and record.sharing != query.sharing:
            continue
        if query.status is not None and record.status != query.status:
            continue
        if query.tag is not None and query.tag not in record.tags:
            continue
        if query.text is not None and query.text.casefold() not in record.name.casefold():
            continue
        point = Point(record.lon, record.lat)
        if query.bbox is not None:
            min_lon, min_lat, max_lon, max_lat = query.bbox
            if not (min_lon <= record.lon <= max_lon and min_lat <= record.lat <= max_lat):
                continue
        if query.sees is not None:
            seen = Point(*query.sees)
            if not any(shape.intersects(seen) for shape in _footprint_shapes(record)):
                continue
        if query.geometry is not None:
            inside = query.geometry.intersects(point)
            if query.relation == "intersects":
                inside = inside or any(
                    query.geometry.intersects(s) for s in _footprint_shapes(record)
                )
            if not inside:
                continue
        distance = 0.0
        if query.near is not None:
            lon, lat, metres = query.near
            distance = float(
                geodesic_distance_m(lon, lat, np.array([record.lon]), np.array([record.lat]))[0]
            )
            if distance > metres:
                continue
        found.append((distance, record.id))
    found.sort()
    return [feed_id for _, feed_id in found]


def _all_pages(index: FeedIndex, query: IndexQuery, limit: int) -> tuple[list[str], int]:
    ids: list[str] = []
    cursor = None
    total = -1
    for _ in range(10_000):
        page = index.search(query, limit=limit, cursor=cursor)
        total = page.total
        ids += page.ids
        cursor = page.next_cursor
        if cursor is None:
            return ids, total
    raise AssertionError("pagination did not end")


@pytest.fixture(scope="module")
async def world() -> tuple[FeedIndex, dict[str, FeedRecord]]:
    rng = random.Random(28181)
    records = {
        record.id: record for record in (_random_record(rng, serial) for serial in range(3_000))
    }
    index = FeedIndex()
    everything = list(records.values())
    await index.apply_and_merge(everything[:2_000])  # the base
    index.apply(everything[2_000:2_600])  # in the base after a later merge
    await index.merge()
    index.apply(everything[2_600:])  # still in the delta
    # later writes: moves, re-aimed views, retirements, a stale revision that must lose
    for record in rng.sample(everything, 300):
        newer = replace(
            record,
            revision=record.revision + 1,
            lon=record.lon + rng.uniform(-0.002, 0.002),
            fov=(rng.uniform(0, 359), 90.0, 150.0) if record.kind == "camera" else None,
            retired=rng.random() < 0.2,
            status="online",
        )
        records[record.id] = newer
        index.apply([newer])
        index.apply([replace(record, revision=0, lon=0.0)])
    await index.settled()  # nothing left running when the module's loop closes
    return index, records


def _random_polygon(rng: random.Random) -> shapely.Geometry:
    lon = CENTRE[0] + rng.uniform(-0.03, 0.03)
    lat = CENTRE[1] + rng.uniform(-0.025, 0.025)
    if rng.random() < 0.5:
        return Point(lon, lat).buffer(rng.uniform(0.001, 0.01), quad_segs=6)
    angle = rng.uniform(0, math.pi)
    half_length, half_width = rng.uniform(0.002, 0.02), rng.uniform(0.0003, 0.002)
    corners = []
    for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
        x, y = sx * half_length, sy * half_width
        corners.append(
            (
                lon + x * math.cos(angle) - y * math.sin(angle),
                lat + x * math.sin(angle) + y * math.cos(angle),
            )
        )
    return shapely.Polygon(corners)


def _random_filters(rng: random.Random) -> dict[str, object]:
    choices: dict[str, object] = {
        "owner": rng.choice(OWNERS),
        "kind": rng.choice(["camera", "sensor"]),
        "industry": rng.choice(["00", "04", "05"]),
        "type_code": "132",
        "region": rng.choice(["62", "620103", "62010400"]),
        "sharing": rng.choice(["unconditional", "not_shared"]),
        "status": rng.choice(["online", "unknown"]),
        "tag": rng.choice(TAGS),
        "text": rng.choice(["north", "MARKET", "camera 1"]),
        "include_retired": True,
    }
    picked = rng.sample(sorted(choices), rng.randint(0, 2))
    return {name: choices[name] for name in picked}


async def test_near_finds_every_feed_within_true_distance_nearest_first(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    index, records = world
    rng = random.Random(1)
    for _ in range(60):
        query = IndexQuery(
            near=(
                CENTRE[0] + rng.uniform(-0.03, 0.03),
                CENTRE[1] + rng.uniform(-0.025, 0.025),
                rng.uniform(50, 1500),
            ),
            **_random_filters(rng),  # type: ignore[arg-type]
        )
        expected = _brute_force(records, query)
        got, total = _all_pages(index, query, limit=rng.choice([7, 50, 1000]))
        assert got == expected
        assert total == len(expected)


async def test_an_index_without_retired_feeds_answers_filters_from_its_groups_alone() -> None:
    """No retired feed: a filter on one grouped value is answered by that group's rows as
    they are, and every other filter as before (checked against the brute force)."""
    rng = random.Random(11)
    records = {
        record.id: record
        for record in (
            replace(_random_record(rng, serial), retired=False) for serial in range(1_500)
        )
    }
    index = FeedIndex()
    await index.apply_and_merge(list(records.values()))
    assert not index._base.any_retired
    for grouped in (False, True):  # scanning the columns, then from the sorted groups
        if grouped:
            index._base.prepare_groups()
        for filters in (
            {},
            {"kind": "camera"},
            {"owner": "lz-tb"},
            {"status": "online"},
            {"tag": "road"},
            {"kind": "sensor", "status": "offline"},
            {"region": "620103"},
            {"placed": True},
        ):
            query = IndexQuery(**filters)  # type: ignore[arg-type]
            expected = sorted(_brute_force(records, query))
            for limit in (13, 1000):
                got, total = _all_pages(index, query, limit)
                assert got == expected, filters
                assert total == len(expected)
    await index.settled()


async def test_near_pages_follow_true_distances_where_local_ones_disagree() -> None:
    """Feeds on rings of one true distance (and a hair's breadth either side of the radius):
    the index orders its candidates by local distances and must make true the ones a page,
    its cursor and its radius depend on. Paged in small pages, the answer is the brute force's,
    which the local distances alone would not give."""
    rng = random.Random(5)
    centre = (CENTRE[0] + 0.004, CENTRE[1] - 0.003)
    metres = 6_000.0
    # metres: (feeds on the ring, how far off it they are at most, in metres). At 2 and 5 km
    # local distances err by up to a few millimetres, more than the feeds' spread on a ring;
    # on the radius they cannot tell in from out.
    rings = {2_000.0: (60, 1e-5), 5_000.0: (80, 1e-4), metres: (40, 1e-4)}
    records: dict[str, FeedRecord] = {}
    for ring, (count, spread) in rings.items():
        azimuths = np.array([rng.uniform(0, 360) for _ in range(count)])
        offsets = np.array([rng.uniform(-spread, spread) for _ in range(count)])
        lons, lats, _ = GEOD.fwd(
            np.full(count, centre[0]), np.full(count, centre[1]), azimuths, ring + offsets
        )
        for lon, lat in zip(lons, lats, strict=True):
            record = replace(
                _random_record(rng, len(records)), lon=float(lon), lat=float(lat), retired=False
            )
            records[record.id] = record
    ringed = list(records.values())
    true_order = sorted(
        (float(geodesic_distance_m(*centre, np.array([r.lon]), np.array([r.lat]))[0]), r.id)
        for r in ringed[:140]
    )
    local_order = sorted(
        (float(local_distance_m(*centre, np.array([r.lon]), np.array([r.lat]))[0]), r.id)
        for r in ringed[:140]
    )
    # what the test is about: inside the radius, local distances order the rings otherwise
    assert [feed_id for _, feed_id in local_order] != [feed_id for _, feed_id in true_order]
    for serial in range(len(records), len(records) + 200):  # and others about
        record = _random_record(rng, serial)
        records[record.id] = record
    index = FeedIndex()
    everything = list(records.values())
    await index.apply_and_merge(everything[:250])
    index.apply(everything[250:])  # some in the delta
    query = IndexQuery(near=(*centre, metres))
    expected = _brute_force(records, query)
    for limit in (7, 33, 1000):
        got, total = _all_pages(index, query, limit)
        assert got == expected
        assert total == len(expected)
    first = index.search(query, limit=5)
    true = geodesic_distance_m(
        *centre,
        np.array([records[feed_id].lon for feed_id in first.ids]),
        np.array([records[feed_id].lat for feed_id in first.ids]),
    )
    assert first.distances == [float(value) for value in true]
    await index.settled()


async def test_sees_finds_exactly_the_views_and_coverages_holding_the_point(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    index, records = world
    rng = random.Random(2)
    hits = 0
    for _ in range(150):
        query = IndexQuery(
            sees=(CENTRE[0] + rng.uniform(-0.03, 0.03), CENTRE[1] + rng.uniform(-0.025, 0.025))
        )
        expected = _brute_force(records, query)
        got, _ = _all_pages(index, query, limit=1000)
        assert got == expected
        hits += len(expected)
    assert hits > 20  # the random points do land in views


async def test_polygon_within_and_intersects_equal_the_brute_force(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    index, records = world
    rng = random.Random(3)
    for _ in range(40):
        geometry = _random_polygon(rng)
        for relation in ("within", "intersects"):
            query = IndexQuery(geometry=geometry, relation=relation, **_random_filters(rng))  # type: ignore[arg-type]
            expected = _brute_force(records, query)
            got, total = _all_pages(index, query, limit=rng.choice([13, 1000]))
            assert got == expected, relation
            assert total == len(expected)


async def test_bbox_and_attribute_filters_equal_the_brute_force(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    index, records = world
    rng = random.Random(4)
    for _ in range(80):
        lon, lat = CENTRE[0] + rng.uniform(-0.03, 0.02), CENTRE[1] + rng.uniform(-0.025, 0.02)
        bbox = (
            (lon, lat, lon + rng.uniform(0.001, 0.03), lat + rng.uniform(0.001, 0.03))
            if rng.random() < 0.5
            else None
        )
        query = IndexQuery(bbox=bbox, **_random_filters(rng))  # type: ignore[arg-type]
        expected = _brute_force(records, query)
        got, total = _all_pages(index, query, limit=rng.choice([17, 333, 1000]))
        assert got == expected
        assert total == len(expected)


async def test_a_stale_revision_never_replaces_a_newer_one(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    index, records = world
    everything, _ = _all_pages(index, IndexQuery(include_retired=True), limit=1000)
    assert everything == sorted(records)
    for feed_id, record in records.items():
        assert index.revision_of(feed_id) == record.revision
    nowhere = index.search(IndexQuery(near=(0.0, 36.06, 1000)), limit=10)
    assert nowhere.total == 0


async def test_a_big_batch_older_than_the_base_keeps_the_newer_rendering() -> None:
    """A big import's columns and renderings come in after its commit: a newer write of one
    of its feeds, folded into the base meanwhile, keeps both its revision and its rendering,
    while the batch's other feeds take theirs."""
    rng = random.Random(77)
    changed, fresh = _random_record(rng, 1), _random_record(rng, 2)
    newer = replace(changed, revision=changed.revision + 1)
    index = FeedIndex()
    index.apply([newer], [b"newer"])
    await index.merge()  # the newer write is in the base, not in the delta
    assert not index._delta.records
    staged = index.rendered.stage([changed.id, fresh.id], [b"older", b"fresh"], coming=2)
    await index.apply_columns(index.columns_of([changed, fresh]), [staged])
    assert index.revision_of(changed.id) == newer.revision
    assert index.rendered.get(changed.id) == b"newer"
    assert index.rendered.get(fresh.id) == b"fresh"
    assert index.revision_of(fresh.id) == fresh.revision


def _table_row(record: FeedRecord) -> dict[str, Any]:
    """The feeds-table row ``FeedRecord.from_row`` reads back as ``record``."""
    fov = record.fov or (None, None, None)
    return {
        "id": record.id, "revision": record.revision, "owner": record.owner,
        "kind": record.kind, "gb_industry": record.industry, "gb_type": record.type_code,
        "gb_region": record.region, "sharing_class": record.sharing, "status": record.status,
        "retired_at": "2026-12-07T00:00:00Z" if record.retired else None,
        "tags": list(record.tags), "name": record.name, "lon": record.lon, "lat": record.lat,
        "fov_heading": fov[0], "fov_angle": fov[1], "fov_range_m": fov[2],
        "coverage": None if record.coverage is None else mapping(record.coverage),
    }  # fmt: skip


@pytest.mark.parametrize("twice", [False, True])
async def test_many_rows_folded_in_as_columns_answer_as_rows_applied_one_by_one(
    twice: bool,
) -> None:
    """A big catalog's rows (``apply_many_rows``: records and columns built in a worker
    thread) leave the index as applying them row by row does; a feed written twice in the
    batch (``twice``) takes the row-by-row path, in order."""
    rng = random.Random(5150)
    existing = [_random_record(rng, n) for n in range(300)]
    written = [replace(record, revision=2, name=f"renamed {n}") for n, record in
               enumerate(existing[:100])]  # fmt: skip
    written += [_random_record(rng, 1_000 + n) for n in range(200)]
    if twice:
        written.append(replace(written[0], revision=3, status="offline"))
    rows = [_table_row(record) for record in written]
    renderings = [f"{record.id}:{record.revision}".encode() for record in written]
    one_by_one, as_columns = FeedIndex(), FeedIndex()
    for index in (one_by_one, as_columns):
        await index.apply_and_merge(existing)
    one_by_one.apply_rows(rows, renderings)
    await one_by_one.merge()
    await as_columns.apply_many_rows(rows, renderings)
    query = IndexQuery(near=(CENTRE[0], CENTRE[1], 5000))
    assert _all_pages(as_columns, query, limit=100) == _all_pages(one_by_one, query, limit=100)
    for record in [*existing, *written]:
        assert as_columns.revision_of(record.id) == one_by_one.revision_of(record.id)
        assert as_columns.rendered.get(record.id) == one_by_one.rendered.get(record.id)
    assert as_columns.revision_of(written[0].id) == (3 if twice else 2)


async def test_merging_the_delta_changes_no_answer(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    index, records = world
    query = IndexQuery(near=(CENTRE[0], CENTRE[1], 2000), kind="camera")
    before = _all_pages(index, query, limit=100)
    await index.merge()
    await index.settled()
    assert _all_pages(index, query, limit=100) == before
    assert before[0] == _brute_force(records, query)


async def test_reads_between_writes_see_each_write_once_where_it_now_is() -> None:
    """Reads search the delta in parts, each read after writes adding one (its feeds' rows in
    the older parts superseded) and merging them past ``DELTA_PARTS``: a feed moved, retired
    or re-aimed is found where it is now, once, and no longer where it was."""
    rng = random.Random(4021)
    records = {record.id: record for record in (_random_record(rng, n) for n in range(1_400))}
    everything = list(records.values())
    index = FeedIndex()
    await index.apply_and_merge(everything[:1_000])
    index.apply(everything[1_000:])  # 400 in the delta
    near = IndexQuery(near=(CENTRE[0], CENTRE[1], 1500))
    box = IndexQuery(bbox=(CENTRE[0] - 0.01, CENTRE[1] - 0.01, CENTRE[0] + 0.01, CENTRE[1] + 0.01))
    superseded_some = merged = False
    for _ in range(60):
        for query in (near, box):
            assert _all_pages(index, query, limit=50)[0] == _brute_force(records, query)
        parts = index._delta.parts
        superseded_some |= any(superseded.any() for _, superseded in parts)
        merged |= len(parts) == 1 and parts[0][0].size > 400
        # ten writes a round, to feeds of the delta and of the base
        for record in rng.sample(list(records.values()), 10):
            newer = replace(
                record,
                revision=record.revision + 1,
                lon=CENTRE[0] + rng.uniform(-0.03, 0.03),
                lat=CENTRE[1] + rng.uniform(-0.025, 0.025),
                retired=rng.random() < 0.2,
                status=rng.choice(["online", "offline"]),
            )
            records[record.id] = newer
            index.apply([newer])
    assert superseded_some, "no read met a part with feeds written after it"
    assert merged, "the parts were never merged"
    await index.settled()


def test_a_forged_cursor_is_refused() -> None:
    index = FeedIndex()
    with pytest.raises(InvalidCursor):
        index.search(IndexQuery(), limit=10, cursor="not-a-cursor")


async def test_filters_answer_the_same_before_and_after_the_groups_are_sorted() -> None:
    rng = random.Random(9)
    records = [_random_record(rng, serial) for serial in range(2_500)]
    index = FeedIndex()
    await index.apply_and_merge(records)
    base = index._base
    base._groups.clear()  # as right after a merge: filters scan the columns
    queries = [IndexQuery(**_random_filters(rng)) for _ in range(60)]  # type: ignore[arg-type]
    scanned = [_all_pages(index, query, limit=50) for query in queries]
    base.prepare_groups()
    assert [_all_pages(index, query, limit=50) for query in queries] == scanned
    expected = {record.id: record for record in records}
    assert [ids for ids, _ in scanned] == [_brute_force(expected, query) for query in queries]
    await index.settled()


async def test_owners_of_answers_owner_and_retired_state_of_exactly_the_ids_asked(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    """Heartbeats are checked with this lookup: base, merged and delta records alike, the
    latest write winning, and nothing found for an id that only starts or ends like one."""
    index, records = world
    asked = list(records)
    assert index.owners_of(asked) == {
        feed_id: (record.owner, record.retired) for feed_id, record in records.items()
    }
    some = asked[:50]
    near_misses = [feed_id[:-1] for feed_id in some] + [feed_id + "0" for feed_id in some]
    near_misses += [f"{some[0]}é", "", "\x00", some[1] + "\x00"]
    assert index.owners_of(near_misses) == {}


def test_a_points_scalar_cell_is_the_cell_the_grid_columns_give() -> None:
    rng = np.random.default_rng(3)
    lon = np.concatenate([rng.uniform(-180, 180, 5_000), [-180.0, 180.0, 0.0, 103.83, -0.005]])
    lat = np.concatenate([rng.uniform(-90, 90, 5_000), [-90.0, 90.0, 0.0, 36.06, 89.999]])
    expected = grid_row(lat) * GRID_COLUMNS + grid_column(lon)
    assert [cell_key(x, y) for x, y in zip(lon, lat, strict=True)] == expected.tolist()
    # and so are the rows and columns a search box's ranges start from, off the map and NaN too
    edges = np.array([-1e9, -200.0, -90.0, -0.004, 0.0, 45.67, 89.995, 90.0, 200.0, np.nan])
    assert [row_of(value) for value in edges] == grid_row(edges).tolist()
    assert [column_of(value) for value in edges] == grid_column(edges).tolist()


def test_positions_of_is_row_of_for_many_ids(
    world: tuple[FeedIndex, dict[str, FeedRecord]],
) -> None:
    """The batched lookup the index applies writes with answers as the one-id lookup does:
    present ids, absent ones, and ids the id column cannot hold (too long, not ASCII)."""
    index, records = world
    base = index._base  # noqa: SLF001 (the snapshot under test)
    present = [feed_id for feed_id in sorted(records) if base.row_of(feed_id) is not None][:50]
    assert len(present) == 50
    odd = ["no-such-feed", present[0] + "x" * 30, "é" + present[1][1:], ""]
    for ids in (present + odd[:1], present + odd, odd):
        expected = [-1 if (row := base.row_of(feed_id)) is None else row for feed_id in ids]
        assert base.positions_of(ids).tolist() == expected


def _column_rows(columns: Columns) -> dict[str, tuple[tuple[object, ...], frozenset[int]]]:
    """Each row of the columns by id, with its tags as a set (tags have no defined order)."""
    tags: dict[int, set[int]] = {}
    for row, code in zip(columns.tag_rows.tolist(), columns.tag_codes.tolist(), strict=True):
        tags.setdefault(row, set()).add(code)
    names = [name for name in Columns.__dataclass_fields__ if name not in ("tag_rows", "tag_codes")]
    rows: dict[str, tuple[tuple[object, ...], frozenset[int]]] = {}
    for row in range(len(columns)):
        values = tuple(
            tuple(np.nan_to_num(getattr(columns, name)[row], nan=-999.0).tolist())
            if name in ("fov", "footprint")
            else getattr(columns, name)[row]
            for name in names
        )
        rows[columns.ids[row].decode()] = (values, frozenset(tags.get(row, ())))
    return rows


@pytest.mark.parametrize("replacing", [False, True])
def test_merging_columns_places_every_row_once_in_id_order(replacing: bool) -> None:
    """A big import's merge writes each column straight into its place (no concatenated copy
    to sort): the result is the base with the incoming rows added or, for a newer revision,
    replacing theirs; an older incoming revision loses; tags follow their rows."""
    rng = random.Random(606 + replacing)
    owners, tags = Vocabulary(), Vocabulary()
    base_records = [_random_record(rng, serial) for serial in range(0, 4_000, 2)]
    base = Snapshot(Columns.from_records(base_records, owners, tags))
    incoming = [_random_record(rng, serial) for serial in rng.sample(range(1, 4_001, 2), 700)]
    expected = {record.id: record for record in base_records}
    if replacing:
        for record in rng.sample(base_records, 300):
            newer = replace(record, revision=2, lon=record.lon + 0.001, tags=("bridge",))
            incoming.append(newer)
            expected[record.id] = newer
        incoming += [replace(record, revision=0, lat=0.0) for record in base_records[:50]]
    for record in incoming:
        if record.revision == 1:
            expected[record.id] = record
    rng.shuffle(incoming)  # the merge sorts what comes in
    merged = merge_columns(base, Columns.from_records(incoming, owners, tags))
    assert merged.columns.ids.tolist() == sorted(feed_id.encode() for feed_id in expected)
    reference = Columns.from_records([expected[key] for key in sorted(expected)], owners, tags)
    assert _column_rows(merged.columns) == _column_rows(reference)
    assert len(merged.columns.tag_rows) == len(reference.tag_rows)
