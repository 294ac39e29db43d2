"""The Faust agents, one module each; ``register_agents`` wires them to a stream context.

Access events, heartbeats and feed metadata do not come through here: the batch path reads
them (``streams.pipeline``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.context import StreamContext


def register_agents(context: StreamContext) -> None:
    from streams.agents import requester_activity

    requester_activity.register(context)
