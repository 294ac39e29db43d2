"""Producing the agents' own messages (alerts, dead letters, repartitioned records).

Agents publish before they acknowledge their input, and wait for the broker's answer, so a
crash can repeat a message but never lose one; consumers deduplicate on the CloudEvents id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import faust
from prometheus_client import Counter

log = logging.getLogger("feedgrid.streams.publisher")

PUBLISHED = Counter("feedgrid_stream_published_total", "Messages produced by the agents", ["topic"])
PUBLISH_ERRORS = Counter(
    "feedgrid_stream_publish_errors_total", "Failed produce attempts (retried)"
)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


class Publisher:
    def __init__(self, app: faust.App, retry_max_seconds: float = 10.0) -> None:
        self.app = app
        self.retry_max_seconds = retry_max_seconds

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Sends every message and returns once the broker acknowledged all of them."""
        if not messages:
            return
        delay = 0.2
        while True:
            try:
                producer = self.app.producer
                pending = [
                    await producer.send(message.topic, message.key, message.value, None, None, None)
                    for message in messages
                ]
                await asyncio.gather(*pending)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                PUBLISH_ERRORS.inc()
                log.warning("could not publish %d messages yet: %s", len(messages), error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            for message in messages:
                PUBLISHED.labels(message.topic).inc()
            return
