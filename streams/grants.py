"""The grants the workers know, per feed: what the retrieval rules judge against.

Kept in memory by the batch path (it owns the feeds of its access-events partitions) and
written to ClickHouse (``grant_states``) in the same batch as the events that changed them,
before their offsets are committed. After a restart or a rebalance the book is read back from
there: ClickHouse is never behind the committed position, so nothing a committed event taught
is forgotten (a replayed grant event re-applies the same state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from infra.clickhouse import connect
from schemas.events import AccessEventData
from streams.rules import GrantState, apply_grant_event, parse_grants, prune_grants

log = logging.getLogger("feedgrid.streams.grants")

# Ended grants are remembered this long, so a late retrieval is judged against its grant.
GRANT_MEMORY_SECONDS = 86_400.0


def _ends_at(state: dict[str, Any]) -> datetime | None:
    ended = state.get("revoked_at") or state.get("valid_until")
    return None if ended is None else datetime.fromtimestamp(float(ended), UTC)


class GrantBook:
    def __init__(self) -> None:
        self._raw: dict[str, dict[str, dict[str, Any]]] = {}
        self._parsed: dict[str, dict[str, GrantState]] = {}

    def grants(self, feed_id: str) -> dict[str, GrantState]:
        parsed = self._parsed.get(feed_id)
        if parsed is None:
            parsed = parse_grants(self._raw.get(feed_id))
            self._parsed[feed_id] = parsed
        return parsed

    def raw(self, feed_id: str) -> dict[str, dict[str, Any]] | None:
        return self._raw.get(feed_id)

    def apply(self, event_type: str, data: AccessEventData, time: datetime) -> list[dict[str, Any]]:
        """Applies a grant event; returns the grant_states rows it changed."""
        feed_id = data.feed_id
        grants = dict(self._raw.get(feed_id) or {})
        changed = apply_grant_event(grants, event_type, data, time)
        pruned = prune_grants(grants, time.timestamp(), GRANT_MEMORY_SECONDS)
        if not (changed or pruned):
            return []
        self._raw[feed_id] = grants
        self._parsed.pop(feed_id, None)
        grant = grants.get(data.grant_id or "")
        if grant is None:
            return []
        return [
            {
                "feed_id": feed_id,
                "grant_id": grant["grant_id"],
                "state": orjson.dumps(grant).decode(),
                "ends_at": _ends_at(grant),
                "version": int(time.timestamp() * 1000),
            }
        ]

    def restore(self, url: str, owns: Callable[[str], bool]) -> int:
        """Reads back the grants of the feeds ``owns`` accepts; returns how many."""
        rows = (
            connect(url)
            .query(
                "SELECT feed_id, state FROM grant_states FINAL "
                "WHERE ends_at IS NULL OR ends_at > now64(3) - toIntervalSecond({keep:UInt32})",
                parameters={"keep": int(GRANT_MEMORY_SECONDS)},
            )
            .result_rows
        )
        raw: dict[str, dict[str, dict[str, Any]]] = {}
        for feed_id, state in rows:
            if owns(feed_id):
                value = orjson.loads(state)
                raw.setdefault(feed_id, {})[value["grant_id"]] = value
        self._raw, self._parsed = raw, {}
        return sum(len(grants) for grants in raw.values())
