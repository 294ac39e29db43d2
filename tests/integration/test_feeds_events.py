"""Feed-metadata events: full state, per-feed order, and no loss while the broker is down.

The broker-outage test starts its own broker (deploy.local_kafka, another port and var dir,
sharing the installed jars), so stopping it never disturbs the shared one.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local_kafka import broker_answers, kafka_paths, start_kafka, stop_kafka
from schemas.events import CloudEvent
from schemas.settings import Settings
from schemas.topics import FEED_METADATA
from tests.integration.feeds_support import (
    TRANSPORT,
    build_city,
    camera,
    outbox_messages,
    read_topic,
    wait_until_sent,
)


def _per_feed(events: list[tuple[str, CloudEvent]]) -> dict[str, list[CloudEvent]]:
    """Distinct events per key in topic order (the relay may deliver a batch twice)."""
    by_feed: dict[str, list[CloudEvent]] = {}
    seen: set[str] = set()
    for key, event in events:
        if str(event.id) in seen:
            continue
        seen.add(str(event.id))
        by_feed.setdefault(key, []).append(event)
    return by_feed


async def _write_history(
    client: httpx.AsyncClient, serials: range
) -> dict[str, list[tuple[str, int]]]:
    """Per feed: register, rename twice, retire. Returns the expected (type, revision) sequence."""
    expected: dict[str, list[tuple[str, int]]] = {}
    for serial in serials:
        response = await client.post("/v1/feeds", json=camera(TRANSPORT, serial))
        assert response.status_code == 201, response.text
        feed_id = response.json()["id"]
        expected[feed_id] = [("feedgrid.feed.registered", 1)]
    for round_number in (2, 3):
        for feed_id, history in expected.items():
            changed = await client.patch(
                f"/v1/feeds/{feed_id}",
                json={"name": f"Round {round_number}"},
                headers={"If-Match": str(round_number - 1)},
            )
            assert changed.status_code == 200, changed.text
            history.append(("feedgrid.feed.updated", round_number))
    for feed_id, history in expected.items():
        assert (await client.delete(f"/v1/feeds/{feed_id}")).status_code == 200
        history.append(("feedgrid.feed.retired", 4))
    return expected


async def test_every_write_publishes_the_full_state_in_order_per_feed(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    city = await build_city(client)
    expected = await _write_history(client, range(1, 6))
    await wait_until_sent(city.runtime)
    events = await read_topic(
        settings.kafka_bootstrap, settings.topic_prefix, FEED_METADATA, until=20
    )
    by_feed = _per_feed(events)
    assert {
        feed_id: [(e.type, e.data["revision"]) for e in history]
        for feed_id, history in by_feed.items()
    } == expected
    registered = by_feed[next(iter(expected))][0]
    assert registered.dataschema == "feedgrid:feed-metadata:v1"
    assert registered.subject == registered.data["id"]
    data = registered.data
    assert data["owner"] == TRANSPORT and data["kind"] == "camera" and data["version"] == 1
    assert data["stream"]["url"].startswith("rtsp://")  # the internal topic carries internal fields
    assert data["gb28181"]["region"] == "62010200" and data["gb28181"]["industry"] == "04"
    assert data["location"]["type"] == "Point" and data["sharing"]["class"] == "unconditional"
    assert by_feed[next(iter(expected))][-1].data["retired"] is True


def _free_port_pair() -> int:
    """A port p with p and p + 1000 (the controller) both free."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 1000 > 65535:
            continue
        with socket.socket() as controller:
            try:
                controller.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def second_broker(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[tuple[Path, int]]:
    """A broker of our own on another port, sharing the installed jars of the shared one."""
    shared_libs = kafka_paths().libs
    var = tmp_path_factory.mktemp("second-broker")
    (var / "kafka").mkdir()
    (var / "kafka" / "libs").symlink_to(shared_libs, target_is_directory=True)
    port = _free_port_pair()
    previous = os.environ.get("FEEDGRID_VAR_DIR")
    os.environ["FEEDGRID_VAR_DIR"] = str(var)
    try:
        start_kafka(port=port, timeout=120)
        yield var, port
    finally:
        stop_kafka()
        if previous is None:
            os.environ.pop("FEEDGRID_VAR_DIR", None)
        else:
            os.environ["FEEDGRID_VAR_DIR"] = previous


@pytest.fixture
def outage_settings(
    settings: Settings, database_url: str, second_broker: tuple[Path, int]
) -> Settings:
    _, port = second_broker
    return settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"})


async def test_writes_succeed_while_the_broker_is_down_and_every_event_arrives_in_order_after(
    outage_settings: Settings, second_broker: tuple[Path, int]
) -> None:
    from registry_api.app import create_app
    from tests.conftest import ADMIN_TOKEN

    var, port = second_broker
    bootstrap = f"127.0.0.1:{port}"
    application = create_app(outage_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://feedgrid.test", timeout=60
        ) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
            client.app = application  # type: ignore[attr-defined]
            city = await build_city(client)
            runtime = city.runtime
            await asyncio.wait_for(runtime.topics_ready.wait(), 60)
            before = await _write_history(client, range(1, 4))
            await wait_until_sent(runtime)

            await asyncio.to_thread(stop_kafka)
            assert not broker_answers(bootstrap, 2.0)
            during = await _write_history(client, range(4, 9))  # every write still answers at once
            assert await outbox_messages(runtime, FEED_METADATA, unsent_only=True) >= 20

            await asyncio.to_thread(start_kafka, port, 120)
            await wait_until_sent(runtime, timeout=120)

    expected = {**before, **during}
    events = await read_topic(
        bootstrap, outage_settings.topic_prefix, FEED_METADATA, until=4 * len(expected), timeout=90
    )
    by_feed = _per_feed(events)
    assert {
        feed_id: [(e.type, e.data["revision"]) for e in history]
        for feed_id, history in by_feed.items()
    } == expected
