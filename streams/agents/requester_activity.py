"""requester-activity agent: per-requester rules over retrievals from every feed.

The access-events agent is partitioned by feed, so it cannot see one requester's retrievals
across feeds. It republishes the retrieval.started events of each batch, grouped per
requester and keyed by requester, to the internal ``requester-activity`` topic; this agent
reads it, so one worker sees all of a requester's retrievals (and, through them, all uses of
the requester's tokens), in any deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from streams.agents.batching import consume_in_batches
from streams.agents.common import dead_letter, store_and_publish_alerts
from streams.context import StreamContext
from streams.publisher import Outgoing
from streams.rules import RaisedAlert, RequesterWindows, decode_opened

log = logging.getLogger("feedgrid.streams.requesters")

AGENT_NAME = "requester-activity"


class RequesterActivityHandler:
    def __init__(self, context: StreamContext) -> None:
        self.context = context
        self.windows = RequesterWindows(
            harvest_threshold=context.tuning.harvest_feeds_per_minute,
            token_window_seconds=context.tuning.token_ip_window_seconds,
        )

    async def handle(self, events: Sequence[Any]) -> None:
        alerts: list[RaisedAlert] = []
        rejected: list[Outgoing] = []
        for event in events:
            try:
                records = decode_opened(event.value)
            except Exception as error:
                reason = f"invalid requester-activity record: {error!r}"
                rejected.append(dead_letter(self.context, event.message, reason))
                continue
            for record in records:
                alerts.extend(self.windows.observe(record))
        await store_and_publish_alerts(self.context, alerts, rejected)


def register(context: StreamContext) -> None:
    handler = RequesterActivityHandler(context)

    @context.app.agent(context.topics.requester_activity, name=AGENT_NAME, concurrency=1)
    async def watch_requester_activity(stream: Any) -> None:
        await consume_in_batches(stream, context.tuning, AGENT_NAME, handler.handle)

    context.agents[AGENT_NAME] = watch_requester_activity
