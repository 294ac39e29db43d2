"""The silence scan (streams/liveness.py) finds the same silent feeds, at the same moments, as
reading every feed's state each time would, while it looks only at the feeds filed under the
seconds that ran out."""

from __future__ import annotations

import random
from typing import Any

from streams.batch import Batch
from streams.catalog import FeedCatalog
from streams.grants import GrantBook
from streams.liveness import LivenessHandler

SILENCE = 30.0


def handler() -> LivenessHandler:
    made = LivenessHandler(
        catalog=FeedCatalog("127.0.0.1:1", "unused"),
        grants=GrantBook(),
        silence_seconds=SILENCE,
        seen_interval_seconds=60.0,
        status_topic="feed-status",
        dead_letter_topic="dead-letter",
    )
    made.started_at = 0.0
    return made


def every_silent_feed(liveness: LivenessHandler, now: float, batch: Batch) -> None:
    """What the scan did before: every online feed's state read, each time."""
    horizon = now - SILENCE
    for feed_id, state in list(liveness.state.items()):
        if state[0] == "online" and state[1] is not None and state[1] <= horizon:
            liveness._transition(  # noqa: SLF001 (the reference uses the same effects)
                feed_id, state, "offline", state[1] + SILENCE, state[1], "silence", batch
            )


def transitions(batch: Batch) -> list[tuple[Any, ...]]:
    """The batch's transitions (in any order: a scan's come in the order it finds them)."""
    return sorted(
        (row["feed_id"], row["status"], row["changed_at"], row["reason"])
        for row in batch.feed_status
    )


def test_the_filed_scan_finds_what_reading_every_state_finds() -> None:
    draw = random.Random(28181)
    filed, reference = handler(), handler()
    feeds = [f"feed-{n}" for n in range(300)]
    # each feed reports at its own pace, pauses now and then, reports offline sometimes
    pace = {feed: draw.choice([0.4, 1.0, 7.0, 20.0, 29.5]) for feed in feeds}
    paused_until = dict.fromkeys(feeds, 0.0)
    last_report = dict.fromkeys(feeds, -100.0)
    went_offline = 0
    now = 0.0
    while now < 400.0:
        now = round(now + draw.choice([0.1, 0.25, 0.5]), 2)
        reports: list[tuple[str, str, float]] = []
        for feed in feeds:
            if now < paused_until[feed] or now - last_report[feed] < pace[feed]:
                continue
            if draw.random() < 0.01:  # silent for a while: past the silence, or not quite
                paused_until[feed] = now + draw.choice([10.0, 29.0, 31.0, 45.0, 120.0])
                continue
            last_report[feed] = now
            status = "offline" if draw.random() < 0.02 else "online"
            reports.append((feed, status, now - draw.choice([0.0, 0.05, 0.3])))
        ours, theirs = Batch(), Batch()
        for feed, status, seen in reports:
            filed.observe(feed, status, seen, now, ours)
            reference.observe(feed, status, seen, now, theirs)
        if int(now * 4) % 4 == 0:  # a scan a second, as the pipeline runs it
            filed.scan(now, ours)
            every_silent_feed(reference, now, theirs)
        assert transitions(ours) == transitions(theirs), now
        went_offline += sum(1 for row in ours.feed_status if row["reason"] == "silence")
    assert went_offline > 50  # the run did test the silence
    # each online feed is filed once (plus stale entries no older than a silence period)
    online = sum(1 for state in filed.state.values() if state[0] == "online")
    filed_entries = sum(len(entries) for entries in filed._due.values())  # noqa: SLF001
    assert online <= filed_entries <= 2 * len(feeds)


def test_a_feed_goes_offline_when_its_silence_runs_out_not_before() -> None:
    liveness = handler()
    batch = Batch()
    liveness.observe("a", "online", 100.0, 100.0, batch)
    liveness.observe("b", "online", 100.0, 100.0, batch)
    liveness.observe("a", "online", 125.0, 125.0, batch)
    assert liveness.scan(129.5, batch) == 0
    assert liveness.scan(130.0, batch) == 1  # b: silent since 100
    assert liveness.state["b"][0] == "offline" and liveness.state["a"][0] == "online"
    assert liveness.scan(154.0, batch) == 0
    assert liveness.scan(155.0, batch) == 1  # a: silent since 125
    assert [row["changed_at"].timestamp() for row in batch.feed_status[-2:]] == [130.0, 155.0]
