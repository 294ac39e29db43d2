"""The Faust agents, one module each; ``register_agents`` wires them to a stream context."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.context import StreamContext


def register_agents(context: StreamContext) -> None:
    from streams.agents import access_events, feed_metadata, heartbeats, requester_activity

    feed_metadata.register(context)
    access_events.register(context)
    requester_activity.register(context)
    heartbeats.register(context)
