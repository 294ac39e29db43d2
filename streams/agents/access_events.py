"""access-events agent: validate, enrich, keep live state, judge grants, hand to the sink.

Per batch: every message is validated against ``schemas.events`` (bad ones go to the
dead-letter topic), enriched with its feed's owner, kind, region, industry and sharing class
from the feed table, applied to the live sessions and the grants table, and judged by the
grant rules. Then the rows go to ClickHouse (access_events, decisions, alerts), alerts and
dead letters and the per-requester records are published, and only then is the batch
acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from streams.agents.batching import consume_in_batches
from streams.agents.common import alert_messages, dead_letter
from streams.context import StreamContext
from streams.dead_letter import InvalidMessage
from streams.decoding import AccessCloudEvent, decode_access_event
from streams.live import session_key
from streams.publisher import Outgoing
from streams.rules import (
    FeedOpened,
    GrantState,
    RaisedAlert,
    apply_grant_event,
    check_retrieval,
    encode_opened,
    parse_grants,
    prune_grants,
)

log = logging.getLogger("feedgrid.streams.access")

AGENT_NAME = "access-events"
GRANT_MEMORY_SECONDS = 86_400.0
_EMPTY_FEED: dict[str, Any] = {}


def access_row(
    event: AccessCloudEvent, feed: dict[str, Any], viewers: int, partition: int, offset: int
) -> dict[str, Any]:
    data = event.data
    return {
        "event_id": event.id,
        "time": event.time,
        "type": event.type.removeprefix("feedgrid."),
        "source": event.source,
        "feed_id": data.feed_id,
        "owner_department": data.owner_department or feed.get("owner_department") or "",
        "requester_department": data.requester_department or "",
        "requester_user": data.requester_user or "",
        "kind": feed.get("kind") or "",
        "region": feed.get("region") or "",
        "industry": feed.get("industry") or "",
        "sharing_class": feed.get("sharing_class") or "",
        "request_id": data.request_id or "",
        "grant_id": data.grant_id or "",
        "token_id": data.token_id or "",
        "action": data.action or "",
        "purpose": data.purpose or "",
        "decision": data.decision or "",
        "reason": data.reason or "",
        "emergency": data.emergency,
        "protocol": data.protocol or "",
        "media_server": data.media_server or "",
        "client_ip": data.client_ip or "",
        "bytes": data.bytes,
        "duration_seconds": data.duration_seconds,
        "concurrent_viewers": viewers,
        "requested_at": data.requested_at,
        "decided_at": data.decided_at,
        "grant_valid_from": data.grant_valid_from,
        "grant_valid_until": data.grant_valid_until,
        "kafka_partition": partition,
        "kafka_offset": offset,
    }


def decision_row(event: AccessCloudEvent, owner_department: str) -> dict[str, Any] | None:
    """The request's state after this event (one row per request and feed; latest wins)."""
    data = event.data
    if not data.request_id:
        return None
    decided = event.type == "feedgrid.access.decided"
    decision = data.decision or ("pending" if not decided else "")
    requested_at: datetime = data.requested_at or event.time
    decided_at = data.decided_at or (event.time if decided and decision != "pending" else None)
    return {
        "request_id": data.request_id,
        "feed_id": data.feed_id,
        # Later events win; at the same millisecond a decision beats the request it answers.
        "version": int(event.time.timestamp() * 1000) * 2 + (1 if decided else 0),
        "event_id": event.id,
        "time": event.time,
        "owner_department": owner_department,
        "requester_department": data.requester_department or "",
        "requester_user": data.requester_user or "",
        "purpose": data.purpose or "",
        "decision": decision,
        "reason": data.reason or "",
        "emergency": data.emergency,
        "requested_at": requested_at,
        "decided_at": decided_at,
    }


class AccessEventsHandler:
    def __init__(self, context: StreamContext) -> None:
        self.context = context
        # Parsed grants per feed; the table holds them as JSON and this agent alone writes them.
        self._grant_cache: dict[str, dict[str, GrantState]] = {}

    async def handle(self, events: Sequence[Any]) -> None:
        rows: list[dict[str, Any]] = []
        decisions: list[dict[str, Any]] = []
        alerts: list[RaisedAlert] = []
        outgoing: list[Outgoing] = []
        opened: dict[str, list[FeedOpened]] = {}
        for event in events:
            message = event.message
            try:
                access = decode_access_event(event.value)
                rows.append(self._process(access, message, decisions, alerts, opened))
            except InvalidMessage as error:
                outgoing.append(dead_letter(self.context, message, error.reason))
            except Exception as error:  # a bug on one event must not stop the stream
                log.exception("access event at offset %s could not be processed", message.offset)
                outgoing.append(dead_letter(self.context, message, f"processing failed: {error!r}"))
        topic = self.context.topics.requester_activity.get_topic_name()
        outgoing += [
            Outgoing(topic, requester.encode(), encode_opened(records))
            for requester, records in opened.items()
        ]
        sink = self.context.sink
        await sink.write_events("access_events", rows)
        await sink.write("decisions", decisions)
        await sink.write("alerts", [alert.to_row() for alert in alerts])
        await self.context.publisher.publish([*alert_messages(self.context, alerts), *outgoing])
        self.context.live.report()

    def _process(
        self,
        event: AccessCloudEvent,
        message: Any,
        decisions: list[dict[str, Any]],
        alerts: list[RaisedAlert],
        opened: dict[str, list[FeedOpened]],
    ) -> dict[str, Any]:
        data = event.data
        feed = self.context.feed(data.feed_id) or _EMPTY_FEED
        owner = data.owner_department or feed.get("owner_department") or ""
        moment = event.time.timestamp()
        kind = event.type
        viewers = self.context.live.viewers(data.feed_id)
        if kind == "feedgrid.retrieval.started":
            viewers = self.context.live.started(data.feed_id, session_key(data), moment)
            alert = check_retrieval(event.id, event.time, data, owner, self._grants(data.feed_id))
            if alert is not None:
                alerts.append(alert)
            record = self._opened(event, owner)
            opened.setdefault(record.requester, []).append(record)
        elif kind == "feedgrid.retrieval.ended":
            viewers = self.context.live.ended(data.feed_id, session_key(data), moment)
        elif kind in ("feedgrid.grant.issued", "feedgrid.grant.revoked"):
            self._update_grants(event)
        elif kind in ("feedgrid.access.requested", "feedgrid.access.decided"):
            row = decision_row(event, owner)
            if row is not None:
                decisions.append(row)
        return access_row(event, feed, viewers, message.partition, message.offset)

    def _grants(self, feed_id: str) -> dict[str, GrantState]:
        parsed = self._grant_cache.get(feed_id)
        if parsed is None:
            parsed = parse_grants(self.context.tables.grants.get(feed_id))
            if len(self._grant_cache) > 200_000:
                self._grant_cache.clear()
            self._grant_cache[feed_id] = parsed
        return parsed

    def _update_grants(self, event: AccessCloudEvent) -> None:
        feed_id = event.data.feed_id
        grants = dict(self.context.tables.grants.get(feed_id) or {})
        changed = apply_grant_event(grants, event.type, event.data, event.time)
        changed = prune_grants(grants, event.time.timestamp(), GRANT_MEMORY_SECONDS) or changed
        if changed:
            self.context.tables.grants[feed_id] = grants
            self._grant_cache.pop(feed_id, None)

    def _opened(self, event: AccessCloudEvent, owner: str) -> FeedOpened:
        data = event.data
        return FeedOpened(
            event_id=event.id,
            time=event.time,
            feed_id=data.feed_id,
            owner_department=owner,
            requester_department=data.requester_department or "",
            requester_user=data.requester_user or "",
            token_id=data.token_id or "",
            grant_id=data.grant_id or "",
            client_ip=data.client_ip or "",
        )


def register(context: StreamContext) -> None:
    handler = AccessEventsHandler(context)

    @context.app.agent(context.topics.access_events, name=AGENT_NAME, concurrency=1)
    async def process_access_events(stream: Any) -> None:
        await consume_in_batches(stream, context.tuning, AGENT_NAME, handler.handle)

    context.agents[AGENT_NAME] = process_access_events
