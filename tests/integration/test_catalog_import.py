"""GB/T 28181 catalogs in: a department's platform posts MANSCDP and its cameras become feeds.

Real-format fixtures (tests/fixtures/catalog/): GB2312-declared bodies with GBK-only
characters, a business-group tree with a device and its channels, one answer in two messages
of one SN, Notify events, and hostile or malformed XML. Real Kafka and the registry database;
liveness reports are read back from the heartbeats topic the workers consume.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import httpx
import pytest

from deploy.catalog_samples import (
    BRIDGE_AREA,
    BUSINESS_GROUP,
    DISTRICT,
    NVR,
    PLATFORM,
    sample_catalog,
    synthetic_catalog,
)
from deploy.catalog_samples import channel_code as code
from schemas.topics import HEARTBEATS
from tests.integration.catalog_support import (
    applied,
    feeds_of,
    fixture,
    post_catalog,
    registry_counts,
)
from tests.integration.feeds_support import POLICE, URBAN, build_city, read_topic

pytestmark = pytest.mark.kafka
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_a_platform_catalog_becomes_feeds_with_its_tree(client: httpx.AsyncClient) -> None:
    city = await build_city(client)
    gateway = city.as_(URBAN, "gateway")
    answer = await applied(client, sample_catalog(), gateway)
    assert answer["state"] == "applied" and answer["complete"], answer
    assert answer["channels"] == {
        "created": 5, "updated": 0, "unchanged": 0, "retired": 0, "revived": 0, "unplaced": 1,
    }  # fmt: skip
    assert answer["rejected"] == [] and answer["skipped"] == []

    found = await feeds_of(client, department=URBAN)
    assert sorted(found) == [code(serial) for serial in range(1, 6)]
    # Chinese text intact, GBK-only characters of a "GB2312" body included
    assert found[code(3)]["name"] == "张掖路喆美广场枪机"
    assert found[code(1)]["location"] == {"type": "Point", "coordinates": [103.8343, 36.0611]}
    assert found[code(1)]["stream"]["protocol"] == "gb28181"
    assert found[code(1)]["sharing"]["class"] == "unconditional"
    secret = found[code(5)]["sharing"]
    assert secret["class"] == "not_shared" and "Secrecy=1" in secret["legal_basis"]

    # the unplaced channel: found by non-spatial filters, listed to locate, off maps and areas
    unplaced = found[code(4)]
    assert unplaced["location"] is None
    assert list(await feeds_of(client, department=URBAN, placed="false")) == [code(4)]
    near = await feeds_of(client, near="103.8343,36.0611,5000")
    assert code(1) in near and code(4) not in near
    inside = await feeds_of(client, bbox="-180,-90,180,90")
    assert code(4) not in inside and code(1) in inside
    points = (await client.get("/v1/feeds/points", params={"department": URBAN})).json()
    assert unplaced["id"] not in points["ids"] and found[code(1)]["id"] in points["ids"]
    summary = await client.get("/v1/catalog/summary", headers=city.as_(URBAN, "dept_admin"))
    assert summary.status_code == 200, summary.text
    assert summary.json() == {
        "department": URBAN, "feeds": 5, "unplaced": 1, "catalog_nodes": 10,
        "platforms": [PLATFORM],
    }  # fmt: skip
    # placing it later is an ordinary edit
    placed = await client.patch(
        f"/v1/feeds/{unplaced['id']}",
        json={"location": {"type": "Point", "coordinates": [103.8301, 36.0602]}},
        headers={"If-Match": str(unplaced["version"])},
    )
    assert placed.status_code == 200, placed.text
    assert code(4) in await feeds_of(client, near="103.8301,36.0602,50")

    # the tree: platform > business group > district > bridge area; the NVR under the platform
    tree = (await client.get("/v1/catalog/tree", params={"department": URBAN})).json()
    (platform,) = tree["roots"]
    assert platform["id"] == PLATFORM and platform["kind"] == "platform"
    by_id = {node["id"]: node for node in _walk(platform)}
    assert [child["id"] for child in by_id[BUSINESS_GROUP]["children"]] == [DISTRICT]
    assert [child["id"] for child in by_id[DISTRICT]["children"]] == [BRIDGE_AREA]
    assert by_id[BRIDGE_AREA]["channels"] == 2 and by_id[DISTRICT]["channels"] == 3
    assert NVR in [child["id"] for child in platform["children"]]
    # the feed filter by tree node: everything beneath the district
    beneath = await feeds_of(client, catalog_node=DISTRICT)
    assert sorted(beneath) == [code(serial) for serial in range(1, 6)]
    assert sorted(await feeds_of(client, catalog_node=BRIDGE_AREA)) == [code(1), code(2)]

    # Status ON/OFF went to the liveness workers as heartbeat reports (not into the registry)
    assert answer["liveness"] == {"reported": 5, "error": None}
    reports = await read_topic(
        client.app.state.runtime.settings.kafka_bootstrap,  # type: ignore[attr-defined]
        client.app.state.runtime.settings.topic_prefix,  # type: ignore[attr-defined]
        HEARTBEATS,
        until=5,
    )
    statuses = {event.data["feed_id"]: event.data["status"] for _, event in reports}
    assert statuses[found[code(1)]["id"]] == "online"
    assert statuses[found[code(2)]["id"]] == "offline"
    assert {event.data["reporter"] for _, event in reports} == {f"gb28181:{PLATFORM}"}
    assert found[code(2)]["status"] == "unknown"  # the workers decide, the registry follows


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node["children"]:
        found += _walk(child)
    return found


@SQLITE_ONLY
async def test_encodings_are_read_as_declared(client: httpx.AsyncClient) -> None:
    city = await build_city(client)
    for name in ("platform_tree_gbk.xml", "platform_tree_utf8.xml"):
        answer = await applied(client, fixture(name), city.as_(URBAN, "gateway"))
        assert answer["rejected"] == [], answer
    found = await feeds_of(client, department=URBAN)
    assert found[code(3)]["name"] == "张掖路喆美广场枪机"
    assert found[code(1)]["name"] == "中山桥南端球机"
    assert len(found) == 5  # the same channels twice: upserted, not doubled


@SQLITE_ONLY
async def test_an_answer_in_two_messages_is_applied_when_complete(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    gateway = city.as_(URBAN, "gateway")
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    first = await applied(client, fixture("answer_sn42_part1.xml"), gateway)
    assert first["state"] == "waiting" and first["received"] == 5 and first["sum_num"] == 9
    feeds, nodes, parts = await registry_counts(runtime)
    assert (feeds, nodes, parts) == (0, 0, 1)  # nothing applied until the answer is whole
    again = await applied(client, fixture("answer_sn42_part1.xml"), gateway)
    assert again["state"] == "waiting" and again["received"] == 5  # a resend counts once
    second = await applied(client, fixture("answer_sn42_part2.xml"), gateway)
    assert second["state"] == "applied" and second["complete"], second
    assert second["channels"]["created"] == 5
    feeds, nodes, parts = await registry_counts(runtime)
    assert (feeds, nodes, parts) == (5, 10, 0)
    tree = (await client.get("/v1/catalog/tree", params={"department": URBAN})).json()
    assert tree["nodes"] == 5  # platform, group, two organisations, the NVR


@SQLITE_ONLY
async def test_a_complete_catalog_retires_absent_channels_and_revives_them(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    gateway = city.as_(URBAN, "gateway")
    await applied(client, sample_catalog(), gateway)
    # the next complete answer lacks the first part's channel 1 and the bridge area
    answer = await applied(client, fixture("answer_sn42_part2.xml").replace(
        b"<SumNum>9</SumNum>", b"<SumNum>4</SumNum>"), gateway)  # fmt: skip
    assert answer["complete"] and answer["channels"]["retired"] == 1, answer
    assert answer["nodes_retired"] == 5  # channel 1, the group, both organisations, the NVR
    live = await feeds_of(client, department=URBAN)
    assert code(1) not in live
    kept = await feeds_of(client, department=URBAN, include_retired="true")
    assert kept[code(1)]["retired"] is True  # retired, not deleted
    back = await applied(client, sample_catalog(sn="18"), gateway)
    assert back["channels"]["revived"] == 1 and back["channels"]["retired"] == 0
    assert (await feeds_of(client, department=URBAN))[code(1)]["retired"] is False


@SQLITE_ONLY
async def test_notify_events_add_change_delete_and_report_liveness(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    gateway = city.as_(URBAN, "gateway")
    await applied(client, sample_catalog(), gateway)
    before = await feeds_of(client, department=URBAN)
    answer = await applied(client, fixture("notify_events_gb2312.xml"), gateway)
    assert answer["kind"] == "Notify" and not answer["complete"]
    assert answer["channels"]["created"] == 1 and answer["channels"]["updated"] == 1
    assert answer["channels"]["retired"] == 1 and answer["rejected"] == []
    after = await feeds_of(client, department=URBAN)
    assert after[code(6)]["name"] == "西关十字路口球机"
    assert after[code(1)]["name"] == "中山桥南端球机（新）"
    assert after[code(1)]["location"] == before[code(1)]["location"]  # kept: none was sent
    assert code(2) not in after
    assert code(3) in after and code(4) in after  # OFF and VLOST change liveness, not the row
    # ADD with Status ON, OFF, VLOST, ON: four reports on the heartbeats topic
    assert answer["liveness"]["reported"] == 4
    settings = client.app.state.runtime.settings  # type: ignore[attr-defined]
    reports = await read_topic(settings.kafka_bootstrap, settings.topic_prefix, HEARTBEATS, until=9)
    last = {event.data["feed_id"]: event.data["status"] for _, event in reports}
    assert last[after[code(3)]["id"]] == "offline"
    assert last[after[code(4)]["id"]] == "offline"
    assert last[after[code(6)]["id"]] == "online"


@SQLITE_ONLY
async def test_hostile_and_malformed_catalogs_are_refused_and_change_nothing(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    gateway = city.as_(URBAN, "gateway")
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    cases = {
        "billion_laughs.xml": (422, "xml_forbidden"),
        "external_entity.xml": (422, "xml_forbidden"),
        "malformed.xml": (422, "invalid_xml"),
        "wrong_encoding.xml": (422, "wrong_encoding"),
    }
    for name, (status, error) in cases.items():
        response = await post_catalog(client, fixture(name), headers=gateway)
        assert (response.status_code, response.json()["code"]) == (status, error), name
    inline = {
        b'<?xml version="1.0" encoding="Shift_JIS"?><Response/>': "unsupported_encoding",
        b"<Query><CmdType>Catalog</CmdType></Query>": "not_a_catalog",
        sample_catalog().replace(PLATFORM.encode(), b"6201000008200200000X", 1): (
            "invalid_device_id"
        ),
        sample_catalog().replace(b"<SN>17</SN>", b"<SN>x</SN>"): "invalid_sn",
        sample_catalog().replace(b'Num="9"', b'Num="8"'): "num_mismatch",
        sample_catalog().replace(b"<SumNum>9</SumNum>", b"<SumNum>3</SumNum>"): "invalid_sum_num",
        b"": "empty_catalog",
    }
    for body, error in inline.items():
        response = await post_catalog(client, body, headers=gateway)
        assert response.status_code == 422 and response.json()["code"] == error, body[:80]
    wrong_type = await client.post(
        "/v1/catalog/manscdp",
        content=sample_catalog(),
        headers={**gateway, "Content-Type": "text/plain"},
    )
    assert wrong_type.status_code == 415
    assert await registry_counts(runtime) == (0, 0, 0)

    # items missing required fields are rejected one by one; the rest is written
    broken = (
        sample_catalog()
        .replace("<Name>白塔山公园入口枪机</Name>".encode("gb18030"), b"")
        .replace(b"<Latitude>36.058300</Latitude>", b"<Latitude>136.0</Latitude>")
    )
    answer = await applied(client, broken, gateway)
    rejected = {problem["device_id"]: problem["message"] for problem in answer["rejected"]}
    assert rejected == {
        code(2): "Name is required",
        code(3): "latitude 136.0 is outside -90..90",
    }
    assert sorted(await feeds_of(client, department=URBAN)) == [code(1), code(4), code(5)]


@SQLITE_ONLY
async def test_a_department_cannot_touch_another_departments_catalog(
    client: httpx.AsyncClient,
) -> None:
    city = await build_city(client)
    await applied(client, sample_catalog(), city.as_(URBAN, "gateway"))
    urban = await feeds_of(client, department=URBAN)
    police = city.as_(POLICE, "gateway")
    # the urban platform's DeviceID is urban's: police may not post under it
    refused = await post_catalog(client, fixture("notify_events_gb2312.xml"), headers=police)
    assert refused.status_code == 403 and refused.json()["code"] == "foreign_device"
    # nor post for urban, nor read urban's catalog summary
    refused = await post_catalog(client, sample_catalog(), headers=police, department=URBAN)
    assert refused.status_code == 403
    summary = await client.get(
        "/v1/catalog/summary", params={"department": URBAN}, headers=city.as_(POLICE, "dept_admin")
    )
    assert summary.status_code == 403
    # police's own platform deleting urban's channel: no such item of police's; urban untouched
    own = fixture("notify_events_gb2312.xml").replace(PLATFORM.encode(), b"62010000002002000001", 1)
    answer = await applied(client, own, police)
    assert {problem["device_id"] for problem in answer["rejected"]} == {
        code(2), code(3), code(4), code(5),
    }  # fmt: skip
    assert answer["channels"]["retired"] == 0
    assert await feeds_of(client, department=URBAN) == urban
    # the same code posted by police is police's own feed, flagged as a duplicate
    groups = (await client.get("/v1/catalog/duplicates", params={"reason": "same_code"})).json()
    assert any(set(group["departments"]) == {POLICE, URBAN} for group in groups["groups"])


@SQLITE_ONLY
async def test_secrecy_follows_what_the_department_says(client: httpx.AsyncClient) -> None:
    city = await build_city(client)
    answer = await applied(
        client, sample_catalog(), city.as_(URBAN, "gateway"), secret_sharing="conditional",
        sharing="not_shared",
    )  # fmt: skip
    assert answer["channels"]["created"] == 5
    found = await feeds_of(client, department=URBAN)
    assert found[code(5)]["sharing"]["class"] == "conditional"
    assert found[code(1)]["sharing"]["class"] == "not_shared"


@SQLITE_ONLY
async def test_a_large_catalog_imports_in_one_message_quickly(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/bench_catalog.py times 50,000 channels (target <= 10 s); here 3,000, bounded.
    What a big catalog builds lives on: frozen out of the collector's sight (infra/heap)."""
    from registry_api.catalog import service

    monkeypatch.setattr(service, "HEARTBEAT_BATCH", 1_000)  # statuses reported in passes
    await build_city(client)
    body = synthetic_catalog(3_000)
    frozen = gc.get_freeze_count()
    started = time.perf_counter()
    first = await applied(client, body, department=URBAN)
    seconds = time.perf_counter() - started
    assert first["channels"]["created"] == 3_000 and first["channels"]["unplaced"] == 300
    assert first["nodes_written"] == 3_000 + 47 + 1 + 1  # channels, NVRs, group, platform
    assert first["liveness"]["reported"] == 3_000
    assert gc.get_freeze_count() >= frozen + 3_000
    again = await applied(client, body, department=URBAN)
    assert again["channels"]["unchanged"] == 3_000 and again["nodes_written"] == 0
    assert seconds < 30, f"3,000 channels took {seconds:.1f} s"
    total = (await client.get("/v1/feeds", params={"department": URBAN, "limit": 1})).json()
    assert total["total"] == 3_000


@SQLITE_ONLY
async def test_a_catalog_is_parsed_and_checked_off_the_event_loop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing, checking and planning a platform's thousands of channels is pure CPU, and so
    is encoding their events and rows: on the event loop it held every other request for up
    to a second; on a worker thread the loop answers."""
    from registry_api.catalog import importer, service, writes

    threads: dict[str, set[int]] = {
        "parse": set(),
        "classify": set(),
        "plan": set(),
        "encode": set(),
    }

    def watched(name: str, work: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            threads[name].add(threading.get_ident())
            return work(*args, **kwargs)

        return run

    monkeypatch.setattr(service, "parse_catalog", watched("parse", service.parse_catalog))
    monkeypatch.setattr(service, "classify_items", watched("classify", service.classify_items))
    monkeypatch.setattr(importer, "_plan_items", watched("plan", importer._plan_items))
    monkeypatch.setattr(writes, "_prepare", watched("encode", writes._prepare))
    city = await build_city(client)
    gateway = city.as_(URBAN, "gateway")
    loop_thread = threading.get_ident()
    answer = await applied(client, sample_catalog(), gateway)
    assert answer["channels"]["created"] == 5
    part = await applied(client, fixture("answer_sn42_part1.xml"), gateway)
    assert part["state"] == "waiting"
    assert all(threads.values()), threads
    assert loop_thread not in set.union(*threads.values()), threads
    # what it refuses is still refused with its reason, and nothing is written
    refused = await post_catalog(client, fixture("malformed.xml"), headers=gateway)
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_xml")
