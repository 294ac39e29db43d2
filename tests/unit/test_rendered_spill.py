"""The rendered-documents store beyond its in-memory size: renderings spilled to its file read
back byte for byte, moved, dropped and compacted (registry_api/feeds/rendered.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from registry_api.feeds.documents import content_values, new_feed_ids
from registry_api.feeds.index.records import Vocabulary
from registry_api.feeds.rendered import RenderedFeeds, render_rows
from registry_api.identity.principal import Principal
from schemas.feeds import FeedCreate
from schemas.identity import Role
from tests.integration.feeds_support import POLICE, TRANSPORT, camera, offset

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
OWNER = Principal("p", POLICE, frozenset({Role.dept_admin}))
OTHER = Principal("t", TRANSPORT, frozenset())


def rows(count: int, name: str = "camera") -> list[dict[str, Any]]:
    made = []
    for serial, feed_id in enumerate(new_feed_ids(count), start=1):
        body = FeedCreate.model_validate(
            camera(POLICE, serial, at=offset(serial * 10, 0), name=f"{name} {serial}")
        )
        values = content_values(body, body.location)
        values.update(
            id=feed_id, status="unknown", last_seen=None, version=1, revision=1,
            created_at=NOW, updated_at=NOW, retired_at=None,
        )  # fmt: skip
        made.append(values)
    return made


def test_spilled_renderings_read_back_as_they_were_rendered() -> None:
    owners = Vocabulary()
    in_memory = RenderedFeeds(owners)
    spilling = RenderedFeeds(owners, spill_above_feeds=10, hot_bytes=0)
    table = rows(40)
    renderings = list(zip([row["id"] for row in table], render_rows(table, owners), strict=True))
    in_memory.put_many(renderings)
    spilling.put_many(renderings)
    spilled, file_bytes = spilling.spilled()
    assert spilled == 40 and file_bytes == spilling.stored_bytes() == in_memory.stored_bytes()
    ids = [row["id"] for row in table]
    for principal in (OWNER, OTHER):
        for feed_id in ids:
            assert spilling.document(feed_id, principal) == in_memory.document(feed_id, principal)
        page = spilling.page(ids[::3], None, principal, total=40, next_cursor="next")
        assert page == in_memory.page(ids[::3], None, principal, total=40, next_cursor="next")
    # last_seen moves forward in the file's renderings as in memory
    later = datetime(2026, 5, 2, tzinfo=UTC)
    assert spilling.saw({ids[0]: later}) == in_memory.saw({ids[0]: later}) == 1
    assert spilling.document(ids[0], OWNER) == in_memory.document(ids[0], OWNER)
    assert b'"last_seen":"2026-05-02T00:00:00Z"' in (spilling.document(ids[0], OWNER) or b"")
    spilling.drop(ids[1])
    assert spilling.document(ids[1], OWNER) is None and len(spilling) == 39


def test_the_file_is_compacted_when_old_renderings_outweigh_the_live_ones() -> None:
    owners = Vocabulary()
    store = RenderedFeeds(owners, spill_above_feeds=0, hot_bytes=0, compact_from_bytes=0)
    first = rows(20)
    ids = [row["id"] for row in first]
    store.put_many(zip(ids, render_rows(first, owners), strict=True))
    _, size = store.spilled()
    for round_number in range(3):  # every feed rewritten: the old bytes become garbage
        renamed = [{**row, "name": f"round {round_number}", "revision": 2 + round_number}
                   for row in first]  # fmt: skip
        store.put_many(zip(ids, render_rows(renamed, owners), strict=True))
    spilled, compacted = store.spilled()
    assert spilled == 20 and compacted <= 2 * store.stored_bytes() and compacted < 4 * size
    for feed_id in ids:
        assert b'"name":"round 2"' in (store.document(feed_id, OWNER) or b"")


def test_staged_renderings_count_once_adopted_and_never_when_released() -> None:
    owners = Vocabulary()
    store = RenderedFeeds(owners, spill_above_feeds=0, hot_bytes=0, compact_from_bytes=0)
    table = rows(6)
    ids = [row["id"] for row in table]
    renderings = render_rows(table, owners)
    kept = store.stage(ids[:3], renderings[:3], coming=6)
    dropped = store.stage(ids[3:], renderings[3:], coming=6)
    assert kept.locations is not None and len(store) == 0  # in the file, not current yet
    store.release([dropped])  # its import rolled back
    store.adopt([kept, dropped], except_ids={ids[2]})  # ids[2] changed again meanwhile
    assert [store.document(feed_id, OWNER) is not None for feed_id in ids] == [
        True, True, False, False, False, False,
    ]  # fmt: skip
    memory = RenderedFeeds(owners)
    memory.put_many(zip(ids[:2], renderings[:2], strict=True))
    for feed_id in ids[:2]:
        assert store.document(feed_id, OTHER) == memory.document(feed_id, OTHER)
    store.put(ids[5], renderings[5])  # a later write compacts the released bytes away
    _, size = store.spilled()
    assert size == store.stored_bytes()
