"""Live state of retrievals: active sessions and concurrent viewers per feed.

Soft state kept in memory by the access-events agent (it owns the feed's partition): a
retrieval.started opens a session, retrieval.ended closes it, and a session never reported as
ended stops counting after ``session_expiry_seconds``. Each stored access event carries the
feed's viewer count after it (``access_events.concurrent_viewers``), so peaks survive restarts.
"""

from __future__ import annotations

from prometheus_client import Gauge

from schemas.events import AccessEventData

ACTIVE_SESSIONS = Gauge("feedgrid_stream_active_sessions", "Retrieval sessions open now")
WATCHED_FEEDS = Gauge("feedgrid_stream_watched_feeds", "Feeds with at least one open session")


def session_key(data: AccessEventData) -> str:
    """One viewer: the token (or grant, or user) from one address, protocol and media server."""
    holder = (
        data.token_id or data.grant_id or data.requester_user or data.requester_department or ""
    )
    return "|".join((holder, data.client_ip or "", data.protocol or "", data.media_server or ""))


class LiveSessions:
    def __init__(self, expiry_seconds: float) -> None:
        self.expiry_seconds = expiry_seconds
        self._by_feed: dict[str, dict[str, float]] = {}
        self._total = 0
        self._updates = 0

    def started(self, feed_id: str, key: str, moment: float) -> int:
        sessions = self._by_feed.setdefault(feed_id, {})
        if key not in sessions:
            self._total += 1
        sessions[key] = moment
        self._after_update(moment)
        return len(sessions)

    def ended(self, feed_id: str, key: str, moment: float) -> int:
        sessions = self._by_feed.get(feed_id)
        if sessions is None:
            return 0
        if sessions.pop(key, None) is not None:
            self._total -= 1
        remaining = len(sessions)
        if not sessions:
            del self._by_feed[feed_id]
        self._after_update(moment)
        return remaining

    def viewers(self, feed_id: str) -> int:
        return len(self._by_feed.get(feed_id, ()))

    @property
    def active_sessions(self) -> int:
        return self._total

    def busiest(self, limit: int = 10) -> list[tuple[str, int]]:
        ranked = sorted(((feed, len(s)) for feed, s in self._by_feed.items()), key=lambda i: -i[1])
        return ranked[:limit]

    def expire(self, now: float) -> int:
        horizon = now - self.expiry_seconds
        dropped = 0
        for feed_id in list(self._by_feed):
            sessions = self._by_feed[feed_id]
            for key in [key for key, opened in sessions.items() if opened < horizon]:
                del sessions[key]
                dropped += 1
            if not sessions:
                del self._by_feed[feed_id]
        self._total -= dropped
        return dropped

    def _after_update(self, moment: float) -> None:
        self._updates += 1
        if self._updates % 10_000 == 0:
            self.expire(moment)

    def report(self) -> None:
        ACTIVE_SESSIONS.set(self._total)
        WATCHED_FEEDS.set(len(self._by_feed))
