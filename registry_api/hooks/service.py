"""One retrieval check for every media server: token, feed, action, grant, revocation.

The fast path touches no database: the token is verified locally (signature cached per token),
the grant comes from the in-memory grant states (read once per grant, revocations polled), the
feed's current path from the location cache (read again whenever the feed index sees the feed
change), and the retrieval event is handed to the batched writer. Only a grant or a feed change
seen for the first time, or a refusal that must name a feed by its path, costs a query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.access.components import AccessServices
from registry_api.access.feed_views import FeedLocations, FeedRevisions
from registry_api.access.revocation import GrantState
from registry_api.audit.service import AccessEvent
from registry_api.enforcement.recorder import OpenedSession, SessionRecorder
from registry_api.tokens.service import RetrievalClaims, TokenRejected
from schemas.events import AccessEventData, EventType, utcnow

HOOK_DECISIONS = Counter(
    "feedgrid_hook_decisions_total", "Media-server retrieval checks", ["server", "outcome", "code"]
)
UNKNOWN_FEED = "unknown"
MAX_TRACKED_SESSIONS = 100_000


@dataclass(frozen=True)
class Attempt:
    """A player asking a media server for a feed, in FeedGrid terms."""

    server: str  # mediamtx | zlmediakit | nginx-rtmp
    token: str | None
    action: str | None  # a FeedGrid action (live, playback); None for one we never grant
    path: str  # the gateway path: <app>/<media path>
    protocol: str | None = None
    client_ip: str | None = None
    session_id: str | None = None
    media_server: str | None = None
    # The configured media server the hook came from (``?server=`` in the hook URL, or
    # ZLMediaKit's mediaServerId): where the session is cut when its grant ends.
    server_name: str | None = None

    def control_session(self) -> tuple[str, str, str] | None:
        """(server kind, server name, the server's own session id), for its control API."""
        if not self.session_id:
            return None
        # nginx-rtmp sessions are kept as addr:clientid; its control API takes the clientid.
        own_id = self.session_id.rsplit(":", 1)[-1] if self.server == "nginx-rtmp" else None
        return (self.server, self.server_name or self.media_server or "", own_id or self.session_id)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    code: str
    message: str
    claims: RetrievalClaims | None = None
    grant: GrantState | None = None


def _requester_department(claims: RetrievalClaims | None, state: GrantState | None) -> str | None:
    if claims is not None and claims.department:
        return claims.department
    return state.requester_department if state is not None else None


def _refuse(
    code: str, message: str, claims: RetrievalClaims | None = None, grant: GrantState | None = None
) -> Verdict:
    return Verdict(False, code, message, claims, grant)


class RetrievalGate:
    def __init__(
        self,
        access: AccessServices,
        sessions: async_sessionmaker[AsyncSession],
        *,
        feed_revisions: FeedRevisions,
        recorder: SessionRecorder | None = None,
    ) -> None:
        self.access = access
        self.sessions = sessions
        self.recorder = recorder
        self.locations = FeedLocations(
            sessions, media_gateway_app=access.settings.media_gateway_app, revisions=feed_revisions
        )

    async def check(self, attempt: Attempt) -> Verdict:
        verdict = await self._decide(attempt)
        HOOK_DECISIONS.labels(
            attempt.server, "allowed" if verdict.allowed else "denied", verdict.code
        ).inc()
        await self._record(attempt, verdict)
        if verdict.allowed and attempt.session_id:
            sessions = self.access.play_sessions
            sessions[self._session_key(attempt)] = time.monotonic()
            if len(sessions) > MAX_TRACKED_SESSIONS:  # ends never reported: forget the oldest
                del sessions[next(iter(sessions))]
            self._record_session(attempt, verdict)
        return verdict

    def _record_session(self, attempt: Attempt, verdict: Verdict) -> None:
        """The session, under its grant, so that it can be cut when the grant ends."""
        control = attempt.control_session()
        if self.recorder is None or control is None or verdict.grant is None:
            return
        kind, server, session_id = control
        app, _, stream = attempt.path.partition("/")
        self.recorder.opened(
            OpenedSession(
                kind=kind,
                server=server,
                session_id=session_id,
                grant_id=verdict.grant.grant_id,
                grant_ends_at=datetime.fromtimestamp(verdict.grant.valid_until, UTC),
                opened_at=utcnow(),
                app=app,
                stream=stream,
                protocol=attempt.protocol,
                client_ip=attempt.client_ip,
            )
        )

    async def _decide(self, attempt: Attempt) -> Verdict:
        if not attempt.token:
            return _refuse("missing_token", "no retrieval token")
        try:
            claims = self.access.tokens.verify(attempt.token)
        except TokenRejected as rejected:
            return _refuse(rejected.code, rejected.message)
        if not await self._names_this_feed(claims, attempt.path):
            return _refuse("token_for_another_feed", "the token is for another feed", claims)
        if attempt.action is None or not claims.allows(attempt.action):
            return _refuse(
                "action_not_granted", f"the grant does not allow {attempt.action or 'this'}", claims
            )
        grants = self.access.grants
        if grants.is_revoked(claims.grant_id):
            return _refuse("grant_revoked", "the grant was revoked", claims)
        state = await grants.state(claims.grant_id)
        if state is None:
            return _refuse("unknown_grant", "the token names no grant", claims)
        if state.revoked:
            return _refuse("grant_revoked", "the grant was revoked", claims, state)
        if state.valid_until <= time.time():
            return _refuse("grant_expired", "the grant has ended", claims, state)
        return Verdict(True, "allowed", "allowed", claims, state)

    async def _names_this_feed(self, claims: RetrievalClaims, path: str) -> bool:
        """Whether the token's feed is served at this path now. A JWT also binds the path it
        was minted for; a compact token names only the feed. Either way the feed's current
        place decides: a feed moved or retired since the token was minted is not at the path,
        whatever feed sits there now."""
        if claims.media_path and claims.media_path != path:
            return False
        location = await self.locations.of_feed(claims.feed_id)
        return location is not None and location.active and location.gateway_path == path

    async def _attempted_feed(
        self, attempt: Attempt, claims: RetrievalClaims | None, names_this_feed: bool
    ) -> tuple[str, str | None]:
        """The feed an attempt is about, and its owner: the token's feed when the token names
        the feed at the path, else the active feed served at the path. The owner of an attempt
        is the owner of the feed at the path, whoever's grant the token carries."""
        if claims is not None and names_this_feed:
            location = await self.locations.of_feed(claims.feed_id)
            return claims.feed_id, location.owner if location else None
        location = await self.locations.at_path(attempt.path)
        return (location.id, location.owner) if location else (UNKNOWN_FEED, None)

    async def _record(self, attempt: Attempt, verdict: Verdict) -> None:
        claims = verdict.claims
        wrong_feed = verdict.code == "token_for_another_feed"
        feed_id, owner = await self._attempted_feed(attempt, claims, not wrong_feed)
        state = verdict.grant
        if state is None and claims is not None and wrong_feed:
            state = await self.access.grants.state(claims.grant_id)
        data = AccessEventData(
            feed_id=feed_id,
            requester_department=_requester_department(claims, state),
            requester_user=(claims.subject or None) if claims else None,
            owner_department=owner,
            grant_id=claims.grant_id if claims else None,
            token_id=claims.token_id if claims else None,
            action=attempt.action,
            decision="allowed" if verdict.allowed else "denied",
            reason=verdict.code,
            protocol=attempt.protocol,
            media_server=attempt.media_server,
            client_ip=attempt.client_ip,
            bytes=0,
            duration_seconds=0.0,
        )
        event_type = EventType.RETRIEVAL_STARTED if verdict.allowed else EventType.RETRIEVAL_DENIED
        self.access.hook_events.add(AccessEvent(event_type, data, attempt.media_server))

    def _session_key(self, attempt: Attempt) -> str:
        return f"{attempt.server}:{attempt.media_server}:{attempt.session_id}"

    async def ended(
        self,
        attempt: Attempt,
        *,
        bytes_sent: int = 0,
        duration_seconds: float | None = None,
    ) -> None:
        """A session ended: its bytes and duration, attributed to the token's grant."""
        started = self.access.play_sessions.pop(self._session_key(attempt), None)
        control = attempt.control_session()
        if self.recorder is not None and control is not None:
            self.recorder.closed(*control)
        if duration_seconds is None:
            duration_seconds = time.monotonic() - started if started is not None else 0.0
        claims = None
        if attempt.token:
            try:
                claims = self.access.tokens.verify(attempt.token, check_time=False)
            except TokenRejected:
                claims = None
        names_this_feed = claims is not None and await self._names_this_feed(claims, attempt.path)
        if not names_this_feed:
            claims = None
        feed_id, owner = await self._attempted_feed(attempt, claims, names_this_feed)
        state = await self.access.grants.state(claims.grant_id) if claims is not None else None
        data = AccessEventData(
            feed_id=feed_id,
            requester_department=_requester_department(claims, state),
            requester_user=(claims.subject or None) if claims else None,
            owner_department=owner,
            grant_id=claims.grant_id if claims else None,
            token_id=claims.token_id if claims else None,
            action=attempt.action,
            protocol=attempt.protocol,
            media_server=attempt.media_server,
            client_ip=attempt.client_ip,
            bytes=max(0, bytes_sent),
            duration_seconds=max(0.0, duration_seconds),
        )
        self.access.hook_events.add(
            AccessEvent(EventType.RETRIEVAL_ENDED, data, attempt.media_server)
        )
