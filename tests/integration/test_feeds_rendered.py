"""Pages are joins of documents rendered when feeds change (registry_api/feeds/rendered.py).

Single feeds (``GET /v1/feeds/{id}``) are those documents too. The reference is how pages and
single feeds were answered before: the rows read from the database on every call and rendered
for the caller (``feed_documents`` / ``feed_document``). After creates, edits, moves,
retirements, bulk imports, liveness changes and ``last_seen`` moves, and on a replica that
follows feed-metadata, every stored rendering, every page and every single feed (with its
ETag) must be byte for byte what that reference answers, for the owner, another department
and the city admin.
"""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from deploy.catalog_samples import sample_catalog
from registry_api.catalog import service as catalog_service
from registry_api.feeds.documents import can_see_internal, feed_document, feed_documents
from registry_api.feeds.models import feeds_table
from registry_api.feeds.service import etag, index_query, load_page_rows
from registry_api.feeds.spatial import DELTA_LIMIT, FeedIndex
from registry_api.identity.principal import Principal
from registry_api.runtime import Runtime
from schemas.feeds import FeedFilters, FeedSearch
from schemas.identity import Role
from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.catalog_support import applied, fixture
from tests.integration.feeds_support import (
    CENTRE,
    POLICE,
    TRANSPORT,
    URBAN,
    City,
    as_feature,
    build_city,
    camera,
    eventually,
    go_live,
    liveness_event,
    offset,
    publish_feed_status,
    sensor,
)

pytestmark = pytest.mark.kafka

# (who, headers as the City gives them, the principal the reference renders for)
CALLERS: list[tuple[str, tuple[str, str] | None, Principal]] = [
    ("police admin", (POLICE, "dept_admin"), Principal("p", POLICE, frozenset({Role.dept_admin}))),
    ("transport requester", (TRANSPORT, "requester"), Principal("t", TRANSPORT, frozenset())),
    ("city admin", None, Principal("admin", None, frozenset({Role.city_admin}))),
]
QUERIES: list[dict[str, Any]] = [
    {"near": f"{CENTRE[0]},{CENTRE[1]},3000", "limit": 7},
    {"near": f"{CENTRE[0]},{CENTRE[1]},3000", "limit": 100, "include_retired": "true"},
    {"sees": ",".join(str(value) for value in offset(40, 0)), "limit": 20},
    {"bbox": f"{CENTRE[0] - 0.05},{CENTRE[1] - 0.05},{CENTRE[0] + 0.05},{CENTRE[1] + 0.05}"},
    {"kind": "sensor", "include_retired": "true"},
    {"department": POLICE, "limit": 3},
]
ALL_ROUND = {"heading": 0, "angle": 360, "range_m": 90}
POLYGON = {
    "geometry": {
        "type": "Polygon",
        "coordinates": [
            [[103.80, 36.03], [103.87, 36.03], [103.87, 36.09], [103.80, 36.09], [103.80, 36.03]]
        ],
    },
    "relation": "intersects",
    "limit": 50,
}


def headers_of(city: City, caller: tuple[str, str] | None) -> dict[str, str]:
    return city.as_(*caller) if caller else {}


async def reference_page(
    runtime: Runtime, principal: Principal, filters: FeedFilters, limit: int, cursor: str | None
) -> bytes:
    """The page as the code before rendered documents built it: rows read, then rendered."""
    index: FeedIndex = runtime.feed_index
    page = index.search(index_query(filters), limit=limit, cursor=cursor)
    async with runtime.sessions() as session:
        rows = await load_page_rows(session, page.ids)
    found = [position for position, feed_id in enumerate(page.ids) if feed_id in rows]
    items = feed_documents([rows[page.ids[position]] for position in found], principal)
    if page.distances is not None:
        for document, position in zip(items, found, strict=True):
            document["distance_m"] = round(page.distances[position], 2)
    answer = {"items": items, "total": page.total, "next_cursor": page.next_cursor}
    return orjson.dumps(answer, option=orjson.OPT_UTC_Z)


async def assert_every_rendering_matches(runtime: Runtime) -> int:
    """Every feed in the database, for every caller: the stored rendering is the document
    the single-feed read renders from the row. Returns how many feeds were compared."""
    async with runtime.sessions() as session:
        rows = (await session.execute(feeds_table.select())).mappings().all()
    rendered = runtime.feed_index.rendered
    assert len(rendered) == len(rows)
    for row in rows:
        for who, _, principal in CALLERS:
            expected = orjson.dumps(
                feed_document(row, show_url=can_see_internal(principal, row["owner"])),
                option=orjson.OPT_UTC_Z,
            )
            assert rendered.document(row["id"], principal) == expected, (who, row["id"])
    return len(rows)


async def assert_single_feeds_match(city: City, client: httpx.AsyncClient | None = None) -> None:
    """``GET /v1/feeds/{id}`` of every feed in the database, for every caller: the document
    rendered from the row for that caller, byte for byte, with the ETag of those bytes (and a
    304 for it)."""
    http = client or city.client
    runtime: Runtime = http.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.sessions() as session:
        rows = (await session.execute(feeds_table.select())).mappings().all()
    for who, caller, principal in CALLERS:
        headers = headers_of(city, caller)
        for row in rows:
            expected = orjson.dumps(
                feed_document(row, show_url=can_see_internal(principal, row["owner"])),
                option=orjson.OPT_UTC_Z,
            )
            path = f"/v1/feeds/{row['id']}"
            answer = await http.get(path, headers=headers)
            assert (answer.status_code, answer.content) == (200, expected), (who, row["id"])
            tag = answer.headers["etag"]
            assert tag == etag(row["version"], expected), (who, row["id"])
            again = await http.get(path, headers={**headers, "If-None-Match": tag})
            assert again.status_code == 304, (who, row["id"])


async def assert_pages_match(city: City, client: httpx.AsyncClient | None = None) -> None:
    """Every query, walked page by page through its cursors, for every caller: the HTTP
    answer is the reference page byte for byte (and gzip holds the same bytes)."""
    http = client or city.client
    runtime: Runtime = http.app.state.runtime  # type: ignore[attr-defined]
    for who, caller, principal in CALLERS:
        headers = headers_of(city, caller)
        for query in QUERIES:
            cursor: str | None = None
            for _ in range(20):
                params = {**query, **({"cursor": cursor} if cursor else {})}
                answer = await http.get("/v1/feeds", params=params, headers=headers)
                assert answer.status_code == 200, answer.text
                filters = FeedFilters.model_validate(
                    {key: value for key, value in query.items() if key != "limit"}
                )
                limit = int(query.get("limit", 100))
                expected = await reference_page(runtime, principal, filters, limit, cursor)
                assert answer.content == expected, (who, params)
                cursor = orjson.loads(answer.content)["next_cursor"]
                if cursor is None:
                    break
        search = FeedSearch.model_validate(POLYGON)
        answer = await http.post("/v1/feeds/search", json=POLYGON, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.content == await reference_page(runtime, principal, search, 50, None), who


FEEDS = 17  # what build_history writes: 11 through the feeds API, 6 through a catalog


async def build_history(city: City) -> list[str]:
    """Feeds of three departments written every way a feed changes; returns their ids."""
    client = city.client
    made = [
        await city.register(camera(POLICE, 1, at=offset(0, 0)), POLICE),
        await city.register(camera(POLICE, 2, at=offset(80, 30), fov=None), POLICE),
        await city.register(camera(TRANSPORT, 3, at=offset(-50, 20), fov=ALL_ROUND), TRANSPORT),
        await city.register(sensor(TRANSPORT, 4, at=offset(300, -200)), TRANSPORT),
        await city.register(camera(URBAN, 5, at=offset(20, -10), name='"Ünïcode"'), URBAN),
        await city.register(sensor(URBAN, 6, at=offset(-900, 400)), URBAN),
    ]  # fmt: skip
    ids = [document["id"] for document in made]
    # an edit (name and view), a move, a retirement
    edited = await client.patch(
        f"/v1/feeds/{ids[0]}",
        json={"name": "Renamed", "fov": {"heading": 45, "angle": 30, "range_m": 150}},
        headers={**city.as_(POLICE), "If-Match": '"1"'},
    )
    assert edited.status_code == 200, edited.text
    moved = await client.patch(
        f"/v1/feeds/{ids[2]}",
        json={"location": {"type": "Point", "coordinates": offset(500, 500)}},
        headers={**city.as_(TRANSPORT), "If-Match": '"1"'},
    )
    assert moved.status_code == 200, moved.text
    retired = await client.delete(f"/v1/feeds/{ids[3]}", headers=city.as_(TRANSPORT))
    assert retired.status_code == 200, retired.text
    # a bulk import: new feeds and a change of an existing one
    features = [as_feature(camera(URBAN, 100 + n, at=offset(10 * n, 60))) for n in range(5)]
    features.append(as_feature(camera(URBAN, 5, at=offset(25, -10), name="Bulk renamed")))
    imported = await client.post(
        "/v1/feeds/bulk",
        json={"type": "FeatureCollection", "features": features},
        headers=city.as_(URBAN),
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["created"] == 5 and imported.json()["updated"] == 1
    # a platform's catalog: channels become feeds (one without a place), then Notify events
    # add one, change one and delete one (the catalog renders its feeds before its commit)
    gateway = city.as_(URBAN, "gateway")
    first = await applied(client, sample_catalog(), gateway)
    assert first["channels"]["created"] == 5, first
    notified = await applied(client, fixture("notify_events_gb2312.xml"), gateway)
    assert notified["channels"]["created"] == 1 and notified["channels"]["updated"] == 1
    assert notified["channels"]["retired"] == 1, notified
    return ids


@pytest.mark.parametrize("catalog_fold", ["rows", "columns"])
async def test_pages_and_documents_equal_what_rendering_the_rows_gives(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, catalog_fold: str
) -> None:
    """``columns``: the history's first catalog (5 channels) is folded into the index as a
    big catalog is (``FeedIndex.apply_many_rows``); its Notify as a small one."""
    folded: list[int] = []
    if catalog_fold == "columns":
        monkeypatch.setattr(catalog_service, "DELTA_LIMIT", 4)
        fold = FeedIndex.apply_many_rows

        async def counted(index: FeedIndex, rows: Any, renderings: Any) -> None:
            folded.append(len(rows))
            await fold(index, rows, renderings)

        monkeypatch.setattr(FeedIndex, "apply_many_rows", counted)
    city = await build_city(client)
    ids = await build_history(city)
    assert folded == ([5] if catalog_fold == "columns" else [])
    runtime = city.runtime
    assert await assert_every_rendering_matches(runtime) == FEEDS
    await assert_pages_match(city)
    await assert_single_feeds_match(city)

    # liveness: a status change (new revision) and a later last_seen without one
    await go_live(city, ids[0], "online")
    seen = datetime.now(UTC).replace(microsecond=123456) + timedelta(seconds=5)
    await publish_feed_status(
        runtime.settings,
        [
            (ids[1], liveness_event(ids[1], "online", changed=False, last_seen=seen)),
            (ids[3], liveness_event(ids[3], "online", changed=False, last_seen=seen)),  # retired
        ],
    )

    async def last_seen_shown() -> bool:
        document = (await client.get(f"/v1/feeds/{ids[1]}")).json()
        return document["last_seen"] is not None

    await eventually(last_seen_shown)
    await asyncio.sleep(0.2)
    assert await assert_every_rendering_matches(runtime) == FEEDS
    await assert_pages_match(city)
    await assert_single_feeds_match(city)


async def test_single_feed_etag_answers_304_until_the_document_changes(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    created = await city.register(camera(POLICE, 1), POLICE)
    path = f"/v1/feeds/{created['id']}"
    first = await client.get(path, headers=city.as_(POLICE))
    tag = first.headers["etag"]
    assert tag.startswith('"1.')
    unchanged = await client.get(path, headers={**city.as_(POLICE), "If-None-Match": tag})
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == tag
    # another department sees another document (no URL): another tag, so no 304
    other = await client.get(path, headers={**city.as_(TRANSPORT), "If-None-Match": tag})
    assert other.status_code == 200 and "url" not in other.json()["stream"]
    # a status change keeps the version (If-Match stays valid) but changes the document
    await go_live(city, created["id"], "online")
    changed = await client.get(path, headers={**city.as_(POLICE), "If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["status"] == "online"
    assert changed.headers["etag"].startswith('"1.') and changed.headers["etag"] != tag
    edited = await client.patch(
        path, json={"name": "Still version 1 here"}, headers={**city.as_(POLICE), "If-Match": tag}
    )
    assert edited.status_code == 200 and edited.json()["version"] == 2


async def test_a_feed_this_process_has_not_rendered_is_read_from_the_database(
    client: httpx.AsyncClient,
) -> None:
    """As on a replica that has not yet followed the feed's creation: the same document and
    ETag, read from the database; an unknown feed is still a 404."""
    city = await build_city(client)
    created = await city.register(camera(POLICE, 1), POLICE)
    path = f"/v1/feeds/{created['id']}"
    rendered = await client.get(path, headers=city.as_(TRANSPORT))
    city.runtime.feed_index.rendered.drop(created["id"])
    assert city.runtime.feed_index.rendered.document(created["id"], CALLERS[1][2]) is None
    from_database = await client.get(path, headers=city.as_(TRANSPORT))
    assert from_database.status_code == 200 and from_database.content == rendered.content
    assert from_database.headers["etag"] == rendered.headers["etag"]
    missing = await client.get("/v1/feeds/no-such-feed", headers=city.as_(TRANSPORT))
    assert missing.status_code == 404 and missing.json()["code"] == "feed_not_found"


async def test_pages_are_gzip_compressed_when_the_client_accepts_it(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    for serial in range(1, 9):
        await city.register(camera(POLICE, serial, at=offset(serial * 10, 0)), POLICE)
    params = {"near": f"{CENTRE[0]},{CENTRE[1]},1000"}
    plain = await client.get("/v1/feeds", params=params, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    # httpx would decode it: read the raw bytes to prove they are gzip
    request = client.build_request(
        "GET", "/v1/feeds", params=params, headers={"Accept-Encoding": "gzip"}
    )
    compressed = await client.send(request, stream=True)
    raw = b"".join([chunk async for chunk in compressed.aiter_raw()])
    await compressed.aclose()
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.headers["vary"] == "Accept-Encoding"
    assert len(raw) < len(plain.content) and gzip.decompress(raw) == plain.content


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_following_replica_renders_what_the_writer_does(settings: Settings) -> None:
    following = settings.model_copy(update={"index_follow": True})
    async with running_client(following) as first, running_client(following) as second:
        city = await build_city(first)
        ids = await build_history(city)
        await go_live(city, ids[4], "offline")
        # a later last_seen without a new revision: only feed-status tells the replicas
        seen = datetime.now(UTC).replace(microsecond=654321) + timedelta(seconds=5)
        event = liveness_event(ids[1], "online", changed=False, last_seen=seen)
        await publish_feed_status(city.runtime.settings, [(ids[1], event)])
        second_runtime: Runtime = second.app.state.runtime  # type: ignore[attr-defined]

        async def caught_up() -> bool:
            try:
                await assert_every_rendering_matches(second_runtime)
            except AssertionError:
                return False
            return True

        async def applied() -> bool:
            return (await first.get(f"/v1/feeds/{ids[1]}")).json()["last_seen"] is not None

        await eventually(applied)
        await eventually(caught_up)
        assert await assert_every_rendering_matches(second_runtime) == FEEDS
        await assert_pages_match(city, second)
        await assert_single_feeds_match(city, second)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_documents_spilled_to_the_file_answer_the_same(settings: Settings) -> None:
    """Above ``rendered_spill_above_feeds`` renderings live in a file: same bytes, every caller,
    after every kind of change (here from the first feed on, with nothing kept in memory)."""
    spilling = settings.model_copy(
        update={"rendered_spill_above_feeds": 0, "rendered_hot_mib": 0.0}
    )
    async with running_client(spilling) as client:
        city = await build_city(client)
        ids = await build_history(city)
        await go_live(city, ids[0], "online")
        # a big import (more than the index's delta holds): staged in the file, then adopted
        features = [
            as_feature(camera(URBAN, 5_000 + n, at=offset(2_000 + n % 50 * 5, n // 50 * 5)))
            for n in range(DELTA_LIMIT + 100)
        ]
        imported = await client.post(
            "/v1/feeds/bulk",
            json={"type": "FeatureCollection", "features": features},
            headers=city.as_(URBAN),
        )
        assert imported.status_code == 200 and imported.json()["created"] == len(features)
        runtime = city.runtime
        spilled, _ = runtime.feed_index.rendered.spilled()
        assert spilled == FEEDS + len(features)  # every rendering is in the file
        assert await assert_every_rendering_matches(runtime) == FEEDS + len(features)
        await assert_pages_match(city)
        await assert_single_feeds_match(city)
