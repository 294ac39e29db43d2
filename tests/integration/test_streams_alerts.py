"""Each alert rule fires on its case and stays quiet on the normal case (real Kafka, chdb).

One stream holds the normal traffic and one case per rule; the alerts stored in ClickHouse and
published on the alerts topic must be exactly the expected ones.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.events import ALERT_EVENT_TYPE, CloudEvent
from schemas.settings import Settings
from schemas.topics import ALERTS
from streams.rules import (
    BULK_HARVESTING,
    FEED_OFFLINE_WHILE_GRANTED,
    RETRIEVAL_OUTSIDE_GRANT,
    RETRIEVAL_WITHOUT_GRANT,
    TOKEN_MULTIPLE_IPS,
)
from tests.integration.streams_support import (
    ACCESS_TOPIC,
    FEED_TOPIC,
    HEARTBEAT_TOPIC,
    Retrieval,
    access_event,
    fast_tuning,
    feed_document,
    feed_event,
    grant_issued,
    heartbeat_event,
    produce,
    query,
    read_topic,
    running_worker,
    wait_for_value,
)

pytestmark = pytest.mark.kafka

HARVEST_LIMIT = 5


def traffic(now: datetime) -> tuple[list[CloudEvent], list[tuple[str, str]]]:
    """The events of every case, and the (rule, requester user or feed) alerts they must raise."""
    hour = timedelta(hours=1)
    window = (now - hour, now + hour)
    events: list[CloudEvent] = []
    expected: list[tuple[str, str]] = []

    # Normal traffic: valid grants, granted actions, one address per token, few feeds each.
    for index in range(HARVEST_LIMIT):
        feed = f"n-{index}"
        events.append(grant_issued(feed, f"g-n-{index}", "lz-jtj", *window, time=now - hour))
        events += Retrieval(feed, "lz-jtj", "normal", f"g-n-{index}", now, 10.0, 1_000).events()
    # the same token twice from the same address is normal
    events += Retrieval(
        "n-0", "lz-jtj", "normal", "g-n-0", now + timedelta(seconds=20), 5.0, 10
    ).events()
    # a department retrieving its own feed needs no grant
    events += Retrieval("n-0", "lz-psb", "owner", "", now, 5.0, 10).events()

    # retrieval_without_grant: no grant named; a grant never issued; a revoked grant;
    # another department's grant.
    events += Retrieval("w-0", "lz-jtj", "nogrant", "", now, 1.0, 1).events()
    events += Retrieval("w-0", "lz-jtj", "unknown", "g-ghost", now, 1.0, 1).events()
    events.append(grant_issued("w-1", "g-revoked", "lz-jtj", *window, time=now - hour))
    events.append(
        access_event("grant.revoked", "w-1", now - timedelta(minutes=5), grant_id="g-revoked")
    )
    events += Retrieval("w-1", "lz-jtj", "revoked", "g-revoked", now, 1.0, 1).events()
    events.append(grant_issued("w-2", "g-other", "lz-cgj", *window, time=now - hour))
    events += Retrieval("w-2", "lz-jtj", "borrower", "g-other", now, 1.0, 1).events()
    expected += [
        (RETRIEVAL_WITHOUT_GRANT, user) for user in ("nogrant", "unknown", "revoked", "borrower")
    ]

    # retrieval_outside_grant: after the window closed; an action the grant does not allow.
    events.append(
        grant_issued("o-0", "g-old", "lz-jtj", now - 3 * hour, now - 2 * hour, time=now - 3 * hour)
    )
    events += Retrieval("o-0", "lz-jtj", "late", "g-old", now, 1.0, 1).events()
    events.append(
        grant_issued("o-1", "g-play", "lz-jtj", *window, actions="playback", time=now - hour)
    )
    events += Retrieval("o-1", "lz-jtj", "live", "g-play", now, 1.0, 1, action="live").events()
    expected += [(RETRIEVAL_OUTSIDE_GRANT, "late"), (RETRIEVAL_OUTSIDE_GRANT, "live")]

    # bulk_harvesting: one requester opens more than the limit of distinct feeds in a minute.
    for index in range(HARVEST_LIMIT + 1):
        feed = f"h-{index}"
        events.append(grant_issued(feed, f"g-h-{index}", "lz-jtj", *window, time=now - hour))
        events += Retrieval(
            feed, "lz-jtj", "harvester", f"g-h-{index}", now + timedelta(seconds=index), 1.0, 1
        ).events()
    expected.append((BULK_HARVESTING, "harvester"))

    # token_multiple_ips: one token from a second address.
    events.append(grant_issued("t-0", "g-t", "lz-jtj", *window, time=now - hour))
    events += Retrieval(
        "t-0", "lz-jtj", "sharer", "g-t", now, 1.0, 1, client_ip="10.9.0.1"
    ).events()
    events += Retrieval(
        "t-0", "lz-jtj", "sharer", "g-t", now + timedelta(seconds=5), 1.0, 1, client_ip="10.9.0.2"
    ).events()
    expected.append((TOKEN_MULTIPLE_IPS, "sharer"))

    # feed_offline_while_granted: a granted feed goes silent; an ungranted one does too.
    events.append(grant_issued("off-granted", "g-off", "lz-jtj", *window, time=now - hour))
    expected.append((FEED_OFFLINE_WHILE_GRANTED, "off-granted"))
    return events, expected


async def test_each_alert_rule_fires_on_its_case_and_not_on_normal_traffic(
    stream_settings: Settings,
) -> None:
    now = datetime.now(UTC)
    events, expected = traffic(now)
    owners = {"o": "lz-psb", "h": "lz-psb"}
    feeds = sorted({event.data["feed_id"] for event in events} | {"off-quiet"})
    documents = [
        feed_document(feed, owners.get(feed.split("-")[0], "lz-psb"), serial=index + 1)
        for index, feed in enumerate(feeds)
    ]
    # A heartbeat handled later than the silence after it was sent counts as stale: 8 s keeps
    # that true of this test's heartbeats on a loaded machine.
    tuning = fast_tuning(harvest_feeds_per_minute=HARVEST_LIMIT, heartbeat_silence_seconds=8.0)
    async with running_worker(stream_settings, tuning):
        await produce(stream_settings, FEED_TOPIC, [feed_event(document) for document in documents])
        await wait_for_value(
            stream_settings, "SELECT uniqExact(feed_id) FROM feed_metadata", len(feeds)
        )
        await produce(stream_settings, ACCESS_TOPIC, events)
        seen = datetime.now(UTC)
        await produce(
            stream_settings,
            HEARTBEAT_TOPIC,
            [heartbeat_event("off-granted", seen), heartbeat_event("off-quiet", seen)],
        )
        stored = await wait_for_value(
            stream_settings, "SELECT count() FROM alerts FINAL", len(expected), timeout=60
        )
        await wait_for_value(
            stream_settings, "SELECT count() FROM access_events", len(events), timeout=30
        )
        published = await read_topic(stream_settings, ALERTS, at_least=len(expected))
    rows = query(
        stream_settings,
        "SELECT rule, requester_user, feed_id, owner_department, requester_department "
        "FROM alerts FINAL ORDER BY rule, requester_user",
    )
    found = sorted(
        (rule, feed if rule == FEED_OFFLINE_WHILE_GRANTED else user)
        for rule, user, feed, _owner, _requester in rows
    )
    assert stored == len(expected), rows
    assert found == sorted(expected)
    assert all(owner == "lz-psb" for _rule, _user, _feed, owner, _requester in rows)
    offline = [row for row in rows if row[0] == FEED_OFFLINE_WHILE_GRANTED]
    assert offline[0][4] == "lz-jtj"

    cloud_events = [CloudEvent.from_bytes(record.value) for record in published]
    assert len({event.id for event in cloud_events}) == len(expected)
    assert {event.type for event in cloud_events} == {ALERT_EVENT_TYPE}
    assert sorted(event.data["rule"] for event in cloud_events) == sorted(
        rule for rule, _ in expected
    )
    statuses = query(
        stream_settings,
        "SELECT feed_id, groupArray(status) FROM "
        "(SELECT feed_id, status FROM feed_status FINAL ORDER BY changed_at) "
        "GROUP BY feed_id ORDER BY feed_id",
    )
    assert statuses == [
        ("off-granted", ["online", "offline"]),
        ("off-quiet", ["online", "offline"]),
    ]
