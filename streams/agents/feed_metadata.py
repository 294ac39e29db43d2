"""feed-metadata agent: stores every version of every feed in ClickHouse (``feed_metadata``).

(Enrichment reads the same topic through each worker's :class:`streams.catalog.FeedCatalog`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from streams.agents.batching import consume_in_batches
from streams.agents.common import dead_letter
from streams.context import StreamContext
from streams.dead_letter import InvalidMessage
from streams.decoding import decode_feed_event
from streams.feeds import FeedSnapshot, snapshot_from_event
from streams.publisher import Outgoing

AGENT_NAME = "feed-metadata"


def metadata_row(
    snapshot: FeedSnapshot, event_id: Any, event_type: str, time: Any, document: Any
) -> dict[str, Any]:
    return {
        "feed_id": snapshot.feed_id,
        "version": snapshot.version,
        "event_id": event_id,
        "event_type": event_type.removeprefix("feedgrid."),
        "time": time,
        "name": snapshot.name,
        "owner_department": snapshot.owner_department,
        "kind": snapshot.kind,
        "region": snapshot.region,
        "industry": snapshot.industry,
        "sharing_class": snapshot.sharing_class,
        "status": snapshot.status,
        "device_code": snapshot.device_code,
        "longitude": snapshot.longitude,
        "latitude": snapshot.latitude,
        "retired": snapshot.retired,
        "registered_at": snapshot.registered_at,
        "document": orjson.dumps(document, default=str).decode(),
    }


class FeedMetadataHandler:
    def __init__(self, context: StreamContext) -> None:
        self.context = context

    async def handle(self, events: Sequence[Any]) -> None:
        rows: list[dict[str, Any]] = []
        rejected: list[Outgoing] = []
        for event in events:
            try:
                cloud_event = decode_feed_event(event.value)
                snapshot, _data = snapshot_from_event(cloud_event)
            except InvalidMessage as error:
                rejected.append(dead_letter(self.context, event.message, error.reason))
                continue
            rows.append(
                metadata_row(
                    snapshot, cloud_event.id, cloud_event.type, cloud_event.time, cloud_event.data
                )
            )
        await self.context.sink.write("feed_metadata", rows)
        await self.context.publisher.publish(rejected)


def register(context: StreamContext) -> None:
    handler = FeedMetadataHandler(context)

    @context.app.agent(context.topics.feed_metadata, name=AGENT_NAME, concurrency=1)
    async def track_feed_metadata(stream: Any) -> None:
        await consume_in_batches(stream, context.tuning, AGENT_NAME, handler.handle)

    context.agents[AGENT_NAME] = track_feed_metadata
