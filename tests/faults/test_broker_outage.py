"""The Kafka broker stopped for 60 s while departments register 10,000 feeds.

A real ``feedgrid api`` process (API and outbox relay) on PostgreSQL talks to a broker of the
test's own (free ports, own data directory), never the shared one. With the relay connected
and idle, the broker is stopped; meanwhile three departments register 10,000 feeds (bulk
imports and single POSTs), re-import some with changes, edit and retire others (about 30 s
here, longer on a busy machine: the broker stays down 60 s, or until they are done). Every
call must answer 2xx, and nothing may reach Kafka meanwhile. After the broker is started
again, every change event in the outbox must arrive on the feed-metadata topic exactly once,
and each feed's events in the order of its versions.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from deploy.local_kafka import kafka_is_up
from infra.kafka_admin import ensure_topics
from infra.kafka_producer import stop_producer
from registry_api.db import create_engine, session_factory
from registry_api.outbox.models import OutboxMessage
from registry_api.outbox.service import row_messages
from schemas.settings import Settings
from schemas.topics import FEED_METADATA, topic_name
from tests.conftest import ADMIN_TOKEN
from tests.faults.fault_support import ApiProcess, OwnBroker
from tests.integration.feeds_support import (
    DEPARTMENTS,
    City,
    as_feature,
    build_city,
    camera,
    offset,
    read_topic,
    sensor,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

OUTAGE_SECONDS = 60.0
BULK_CALLS = 6  # per department
BULK_SIZE = 500
SINGLES = (334, 333, 333)  # per department: 3 x 3,000 by bulk + 1,000 single = 10,000
EDITED = 100  # single-registered feeds per department renamed twice, the first half retired
REIMPORTED = 1  # bulk calls per department sent again with changed names
SERIALS_PER_DEPARTMENT = 20_000  # keeps the generated stream addresses valid


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path / "own-broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Calls:
    """Every answer of the workload: failures kept with their bodies, changes counted."""

    failures: list[str] = field(default_factory=list)
    changes: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def check(self, kind: str, response: httpx.Response, *expected: int) -> dict[str, Any]:
        self.by_kind[kind] += 1
        if response.status_code not in expected:
            self.failures.append(f"{kind}: HTTP {response.status_code} {response.text[:300]}")
            return {}
        return response.json()  # type: ignore[no-any-return]


def _bulk_body(features: list[dict[str, Any]], as_ndjson: bool) -> tuple[bytes, str]:
    if as_ndjson:
        return b"\n".join(orjson.dumps(item) for item in features), "application/x-ndjson"
    collection = {"type": "FeatureCollection", "features": features}
    return orjson.dumps(collection), "application/geo+json"


async def _department_registers(
    client: httpx.AsyncClient, city: City, number: int, department: str, calls: Calls
) -> None:
    """One department's minute: bulk imports, single registrations, edits, retirements."""
    headers = city.as_(department)
    base = number * SERIALS_PER_DEPARTMENT
    imports: list[list[dict[str, Any]]] = []
    for call in range(BULK_CALLS):
        first = base + call * BULK_SIZE
        features = [
            as_feature(camera(department, serial, at=offset(serial % 3000, number * 500)))
            for serial in range(first, first + BULK_SIZE)
        ]
        body, content_type = _bulk_body(features, as_ndjson=call % 2 == 0)
        answer = calls.check(
            "bulk",
            await client.post(
                "/v1/feeds/bulk",
                content=body,
                headers={**headers, "Content-Type": content_type},
            ),
            200,
        )
        if answer:
            assert answer["created"] == BULK_SIZE and not answer["rejected"], answer
            calls.changes += answer["created"]
        imports.append(features)

    registered: list[dict[str, Any]] = []
    first_single = base + BULK_CALLS * BULK_SIZE
    for serial in range(first_single, first_single + SINGLES[number]):
        at = offset(serial % 3000, number * 500 + 250)
        make = camera if serial % 3 else sensor
        feed = make(department, serial, at=at)
        if serial % 2:
            feed = as_feature(feed)
        document = calls.check(
            "register", await client.post("/v1/feeds", json=feed, headers=headers), 201
        )
        if document:
            calls.changes += 1
            registered.append(document)

    for features in imports[:REIMPORTED]:
        for feature in features:
            feature["properties"]["name"] += " (renamed)"
        body, content_type = _bulk_body(features, as_ndjson=False)
        answer = calls.check(
            "bulk again",
            await client.post(
                "/v1/feeds/bulk",
                content=body,
                headers={**headers, "Content-Type": content_type},
            ),
            200,
        )
        if answer:
            assert answer["updated"] == BULK_SIZE, answer
            calls.changes += answer["updated"]

    for position, document in enumerate(registered[:EDITED]):
        version = document["version"]
        for round_number in (2, 3):
            edited = calls.check(
                "edit",
                await client.patch(
                    f"/v1/feeds/{document['id']}",
                    json={"name": f"{document['name']} round {round_number}"},
                    headers={**headers, "If-Match": f'"{version}"'},
                ),
                200,
            )
            if not edited:
                break
            version = edited["version"]
            calls.changes += 1
        if position % 2 == 0:
            retired = calls.check(
                "retire",
                await client.delete(
                    f"/v1/feeds/{document['id']}", headers={**headers, "If-Match": f'"{version}"'}
                ),
                200,
            )
            calls.changes += 1 if retired else 0


OutboxRow = tuple[int, str, bytes, bool]


async def _outbox(engine: AsyncEngine) -> list[OutboxRow]:
    """Feed-metadata outbox messages in order (a row may bundle many): (row id, key, payload,
    sent)."""
    async with session_factory(engine)() as session:
        rows = await session.execute(
            select(
                OutboxMessage.id,
                OutboxMessage.key,
                OutboxMessage.payload,
                OutboxMessage.messages,
                OutboxMessage.codec,
                OutboxMessage.sent_at.is_not(None),
            )
            .where(OutboxMessage.topic == FEED_METADATA)
            .order_by(OutboxMessage.id)
        )
        return [
            (row_id, key.decode(), value, sent)
            for row_id, row_key, payload, messages, codec, sent in rows.all()
            for key, value in row_messages(row_key, payload, messages, codec)
        ]


def _unsent(rows: list[OutboxRow]) -> int:
    return sum(1 for *_, sent in rows if not sent)


async def _wait_sent(engine: AsyncEngine, timeout: float) -> int:
    """Polls until the relay marked every feed-metadata row sent; returns the unsent count."""
    deadline = time.monotonic() + timeout
    unsent = _unsent(await _outbox(engine))
    while unsent and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        unsent = _unsent(await _outbox(engine))
    return unsent


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_broker_down_a_minute_while_departments_register_loses_no_event(
    settings: Settings, own_broker: OwnBroker, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"kafka_bootstrap": own_broker.bootstrap})
    await ensure_topics(settings)
    api = ApiProcess(settings, tmp_path / "api.log")
    engine = create_engine(settings.database_url)
    api.start()
    try:
        await asyncio.to_thread(api.wait_ready)
        async with httpx.AsyncClient(
            base_url=api.base_url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=120,
        ) as client:
            city = await build_city(client)
            # The relay is connected and idle when the broker goes: one feed each, delivered.
            for number, department in enumerate(DEPARTMENTS):
                await city.register(camera(department, 19_999 + number * 20_000), department)
            assert await _wait_sent(engine, timeout=60) == 0, api.log_tail()
            sent_before = len(await _outbox(engine))

            await asyncio.to_thread(own_broker.stop)
            stopped = time.monotonic()
            assert not await kafka_is_up(own_broker.bootstrap, 2.0)
            calls = Calls()
            await asyncio.gather(
                *(
                    _department_registers(client, city, number, department, calls)
                    for number, department in enumerate(DEPARTMENTS)
                )
            )
            registered_in = time.monotonic() - stopped
            assert calls.failures == [], calls.failures[:20]
            rows = await _outbox(engine)
            # Nothing got out while the broker was down; every change waits in the outbox.
            assert len(rows) - sent_before == calls.changes
            assert _unsent(rows) == calls.changes
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
            assert not await kafka_is_up(own_broker.bootstrap, 2.0)
            outage = time.monotonic() - stopped

            await asyncio.to_thread(own_broker.start)
            restarted = time.monotonic()
            assert await _wait_sent(engine, timeout=180) == 0, api.log_tail()
            drained_in = time.monotonic() - restarted
        rows = await _outbox(engine)
    finally:
        exit_code = api.stop()
        await engine.dispose()
    assert exit_code in (0, -signal.SIGTERM), api.log_tail()

    expected = {str(orjson.loads(payload)["id"]): key for _, key, payload, _ in rows}
    received = await read_topic(
        own_broker.bootstrap, settings.topic_prefix, FEED_METADATA, until=len(expected), timeout=120
    )
    ids = [str(event.id) for _, event in received]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} events published twice"
    assert set(ids) == set(expected), f"{len(set(expected) - set(ids))} events lost"
    versions: dict[str, list[int]] = {}
    for key, event in received:
        assert expected[str(event.id)] == key == event.data["id"]
        versions.setdefault(key, []).append(event.data["version"])
    out_of_order = {key: seen for key, seen in versions.items() if seen != sorted(set(seen))}
    assert out_of_order == {}
    assert sum(1 for seen in versions.values() if len(seen) > 1) == 3 * (BULK_SIZE + EDITED)
    print(
        f"\n{dict(calls.by_kind)} calls, {calls.changes} changes in {registered_in:.0f}s with the "
        f"broker down ({outage:.0f}s outage); the outbox drained {drained_in:.0f}s after the "
        f"restart; {len(ids)} events on the topic, each once, in order per feed"
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # no database in it
async def test_a_producer_holding_batches_stops_in_its_grace_while_the_broker_is_down(
    settings: Settings, own_broker: OwnBroker
) -> None:
    """aiokafka's own stop waits for the broker to take every batch the producer holds: with
    the broker gone it did not return, and neither did the process stopping it."""
    settings = settings.model_copy(update={"kafka_bootstrap": own_broker.bootstrap})
    await ensure_topics(settings)
    topic = topic_name(settings.topic_prefix, FEED_METADATA)
    unread: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unread.append(context))

    healthy = AIOKafkaProducer(bootstrap_servers=own_broker.bootstrap, enable_idempotence=True)
    await healthy.start()
    sent = await healthy.send(topic, b"delivered", key=b"a")
    assert await stop_producer(healthy, within=5.0)  # the broker answers: all delivered
    assert (await sent).offset >= 0

    producer = AIOKafkaProducer(
        bootstrap_servers=own_broker.bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    await producer.send_and_wait(topic, b"before", key=b"a")
    await asyncio.to_thread(own_broker.stop)
    # batches on every partition, some of them sent (and refused) before the stop
    held = [await producer.send(topic, b"held", key=f"{n}".encode()) for n in range(24)]
    await asyncio.sleep(1.0)
    held += [await producer.send(topic, b"held later", key=f"{n}".encode()) for n in range(24)]
    asked = time.monotonic()
    async with asyncio.timeout(60):  # failing, not hanging, if the stop waits for the broker
        delivered = await stop_producer(producer, within=2.0)
    took = time.monotonic() - asked

    assert not delivered
    assert took < 2.0 + 5.0, f"the stop took {took:.1f} s"
    for future in held:
        with pytest.raises(KafkaTimeoutError):
            await future
    gc.collect()
    await asyncio.sleep(0)
    assert unread == []  # no failed future left for asyncio to report as never read
