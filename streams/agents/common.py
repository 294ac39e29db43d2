"""Small pieces every agent uses: dead letters for rejected messages, alert publication."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from schemas.dead_letter import DeadLetter
from streams.batch import alert_messages
from streams.context import StreamContext
from streams.publisher import Outgoing
from streams.rules import RaisedAlert

log = logging.getLogger("feedgrid.streams.agents")


def dead_letter(context: StreamContext, message: Any, reason: str) -> Outgoing:
    log.warning("rejected %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
    key = message.key if isinstance(message.key, bytes) else None
    return Outgoing(
        context.topics.dead_letter, key, DeadLetter.from_message(message, reason).to_bytes()
    )


async def store_and_publish_alerts(
    context: StreamContext, alerts: Sequence[RaisedAlert], also: Sequence[Outgoing] = ()
) -> None:
    """Alerts go to ClickHouse and to the alerts topic, with any other outgoing messages."""
    await context.sink.write("alerts", [alert.to_row() for alert in alerts])
    await context.publisher.publish([*alert_messages(context.topics.alerts, alerts), *also])
