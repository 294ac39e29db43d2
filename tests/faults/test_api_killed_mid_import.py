"""The API process SIGKILLed in the middle of a bulk import of the demo city.

A real ``feedgrid api`` process on SQLite (the embedded default) gets the demo city (57,000
cameras and 3,000 sensors, NDJSON) the way ``feedgrid seed --load`` sends it, and is killed
with SIGKILL half-way through the import's work. Before anything else happens, every feature
must be either wholly there (its row and its one event) or absent. Then the API is started
again and the same import sent again: the registry must equal what a clean import of the
same city leaves in another database (every column but the generated ids and timestamps),
and the outbox must hold exactly one change event per feed actually changed.

"Half-way" is measured in the API's own CPU time, against the CPU time a clean import took:
on a loaded machine wall-clock time says little about how far the import got.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from deploy.seed.cli import load_into_api
from deploy.seed.writer import write_demo_city
from registry_api.outbox.service import row_messages
from schemas.settings import Settings
from schemas.topics import FEED_METADATA
from tests.conftest import ADMIN_TOKEN
from tests.faults.fault_support import ApiProcess
from tests.integration.streams_support import make_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CITY_FEEDS = 60_000
KILL_AT_SHARE_OF_IMPORT_CPU = 0.5
# Generated per database or per write: everything else must be equal.
GENERATED_COLUMNS = ("id", "created_at", "updated_at")


@pytest.fixture(scope="module")
def demo_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo-city")
    write_demo_city(directory, requests=0, progress=False)
    return directory


@dataclass
class RegistryState:
    """Feeds by (owner, code) without their generated columns, and the feed-metadata events."""

    feeds: dict[tuple[str, str], tuple[Any, ...]]
    feed_keys: dict[str, tuple[str, str]]  # id -> (owner, code)
    events: list[tuple[str, str, int]]  # (subject, type, version) in outbox order


def read_registry(database: Path) -> RegistryState:
    # A plain connection: after a kill it recovers the WAL as the restarted API would.
    connection = sqlite3.connect(database)
    try:
        cursor = connection.execute("SELECT * FROM feeds")
        names = [column[0] for column in cursor.description]
        kept = [i for i, name in enumerate(names) if name not in GENERATED_COLUMNS]
        owner, code, feed_id = names.index("owner"), names.index("code"), names.index("id")
        feeds, feed_keys = {}, {}
        for row in cursor:
            feeds[(row[owner], row[code])] = tuple(row[i] for i in kept)
            feed_keys[row[feed_id]] = (row[owner], row[code])
        events = []
        for key, payload, messages, codec in connection.execute(
            "SELECT key, payload, messages, codec FROM outbox WHERE topic = ? ORDER BY id",
            (FEED_METADATA,),
        ):
            for _, value in row_messages(key, payload, messages, codec):
                event = orjson.loads(value)
                events.append((event["subject"], event["type"], event["data"]["version"]))
    finally:
        connection.close()
    return RegistryState(feeds, feed_keys, events)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _api_settings(root: Path, kafka_bootstrap: str, topic_prefix: str, template: Path) -> Settings:
    root.mkdir()
    settings = make_settings(root, kafka_bootstrap, topic_prefix, template)
    return settings.model_copy(update={"admin_token": ADMIN_TOKEN})


def _database(settings: Settings) -> Path:
    return Path(settings.database_url.split("///", 1)[1])


async def _import(city: Path, api: ApiProcess) -> dict[str, Any]:
    summary = await asyncio.to_thread(load_into_api, city, api.base_url, ADMIN_TOKEN)
    return summary["bulk"]  # type: ignore[no-any-return]


async def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return condition()


async def test_api_killed_mid_import_keeps_features_whole_and_a_retry_converges(
    demo_city: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    sqlite_template: Path,
) -> None:
    # The same import done cleanly, in a database of its own: the state to converge to.
    clean_settings = _api_settings(
        tmp_path / "clean", kafka_bootstrap, topic_prefix, sqlite_template
    )
    clean_api = ApiProcess(clean_settings, tmp_path / "clean-api.log")
    clean_api.start()
    try:
        await asyncio.to_thread(clean_api.wait_ready)
        assert clean_api.process is not None
        cpu_before = _cpu_seconds(clean_api.process.pid)
        clean_began = time.monotonic()
        clean_result = await _import(demo_city, clean_api)
        clean_seconds = time.monotonic() - clean_began
        import_cpu = _cpu_seconds(clean_api.process.pid) - cpu_before
    finally:
        clean_api.stop()
    assert clean_result["created"] == CITY_FEEDS and clean_result["rejected"] == []
    clean = read_registry(_database(clean_settings))
    assert len(clean.feeds) == CITY_FEEDS

    settings = _api_settings(tmp_path / "killed", kafka_bootstrap, topic_prefix, sqlite_template)
    api = ApiProcess(settings, tmp_path / "api.log")
    api.start()
    try:
        await asyncio.to_thread(api.wait_ready)
        assert api.process is not None
        pid = api.process.pid
        kill_at = _cpu_seconds(pid) + KILL_AT_SHARE_OF_IMPORT_CPU * import_cpu
        importing = asyncio.create_task(_import(demo_city, api))
        reached = await _wait_until(lambda: _cpu_seconds(pid) >= kill_at, timeout=300)
        helpers = _children(pid)
        assert reached and not importing.done(), "the import ended before the kill"
        api.kill()
        with pytest.raises(httpx.HTTPError):
            await importing  # the client never got an answer
        # A killed API leaves nothing running behind it (the validation helper follows it).
        assert await _wait_until(lambda: not any(map(_alive, helpers)), timeout=30), helpers

        # Before any retry, each feature is wholly there (its row and one event) or absent.
        killed = read_registry(_database(settings))
        events_per_feed = Counter(subject for subject, _, _ in killed.events)
        assert set(events_per_feed) == set(killed.feed_keys)
        assert set(events_per_feed.values()) <= {1}
        for key, columns in killed.feeds.items():
            assert columns == clean.feeds[key], key
        present_after_kill = len(killed.feeds)

        api.start()
        await asyncio.to_thread(api.wait_ready)
        retried_result = await _import(demo_city, api)
    finally:
        api.stop()
    assert retried_result["rejected"] == []
    assert retried_result["created"] == CITY_FEEDS - present_after_kill
    assert retried_result["unchanged"] == present_after_kill

    retried = read_registry(_database(settings))
    assert retried.feeds == clean.feeds
    # One change event per feed actually changed, as after the clean import.
    events_per_feed = Counter(subject for subject, _, _ in retried.events)
    assert events_per_feed == Counter(retried.feed_keys.keys())
    assert sorted((retried.feed_keys[s], t, v) for s, t, v in retried.events) == sorted(
        (clean.feed_keys[s], t, v) for s, t, v in clean.events
    )
    print(
        f"\nclean import {clean_seconds:.1f}s ({import_cpu:.1f} CPU-s in the API); killed at "
        f"{KILL_AT_SHARE_OF_IMPORT_CPU:.0%} of that CPU with {present_after_kill} features "
        f"stored; the retry created {retried_result['created']}"
    )
