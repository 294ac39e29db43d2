"""Broker credentials for a sensor grant's retrieval: a client of its own on the MQTT broker
that may subscribe to the grant's sensor topics only, cut with the grant.

The row that lets the enforcer delete the client is committed before the client exists on
the broker, so a crash in between leaves nothing on the broker that FeedGrid would not cut.
After the broker has it, the grant is read again: a revocation that came meanwhile is applied
here (the enforcer may have looked before the client existed).
"""

from __future__ import annotations

import secrets
import uuid

from prometheus_client import Counter
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.models import Grant
from registry_api.enforcement.broker import topics_of
from registry_api.enforcement.control import ControlFailure
from registry_api.enforcement.models import GrantSession
from registry_api.enforcement.worker import Enforcer
from registry_api.errors import ApiError
from schemas.access import AccessAction, RetrievalOut
from schemas.enforcement import MqttCredentials
from schemas.events import utcnow
from schemas.settings import Settings

ISSUED = Counter(
    "feedgrid_broker_credentials_total",
    "Broker credentials issued with sensor retrievals, by outcome",
    ["outcome"],
)
BROKER = "broker"
MQTT_NOTE = "user name and password from `mqtt` in this answer; subscribe to the topic in the path"


class GrantEnded(ApiError):
    status_code = 410
    code = "grant_revoked"


def _sensor_paths(answer: RetrievalOut) -> list[str]:
    return [
        feed.media_path for feed in answer.feeds if any(url.protocol == "mqtt" for url in feed.urls)
    ]


async def with_broker_credentials(
    session: AsyncSession, settings: Settings, enforcer: Enforcer, answer: RetrievalOut
) -> RetrievalOut:
    """The retrieval, with broker credentials when the grant has sensor feeds and a broker is
    configured. A broker that cannot be reached leaves the answer without them, saying why."""
    paths = _sensor_paths(answer)
    if not paths or enforcer.broker is None or AccessAction.read not in answer.actions:
        return answer
    grant = await session.get(Grant, answer.grant_id)
    assert grant is not None  # the retrieval just read it
    username = f"fg-{grant.id[:12]}-{secrets.token_hex(4)}"
    topics = topics_of(paths)
    row = GrantSession(
        id=uuid.uuid4().hex,
        grant_id=grant.id,
        grant_ends_at=grant.valid_until,
        kind="mqtt",
        server=BROKER,
        session_id=username,
        opened_at=utcnow(),
        attempts=0,
    )
    session.add(row)
    await session.commit()
    try:
        client = await enforcer.broker.create_client(username=username, topics=topics)
    except ControlFailure as failure:
        await session.execute(delete(GrantSession).where(GrantSession.id == row.id))
        await session.commit()
        ISSUED.labels("broker_unavailable").inc()
        return answer.model_copy(update={"mqtt_unavailable": str(failure)})
    fresh = await session.scalar(
        select(Grant.revoked_at)
        .where(Grant.id == grant.id)
        .execution_options(populate_existing=True)
    )
    if fresh is not None or grant.valid_until <= utcnow():
        enforcer.grant_revoked(grant.id)
        ISSUED.labels("grant_ended").inc()
        raise GrantEnded("the grant was revoked", code="grant_revoked")
    await _keep_the_newest(session, settings, grant.id)
    enforcer.wake()
    ISSUED.labels("issued").inc()
    urls_noted = [
        feed.model_copy(
            update={
                "urls": [
                    url.model_copy(update={"note": MQTT_NOTE}) if url.protocol == "mqtt" else url
                    for url in feed.urls
                ]
            }
        )
        for feed in answer.feeds
    ]
    credentials = MqttCredentials(
        url=f"mqtt://{settings.media_gateway_host}:{settings.media_gateway_mqtt_port}",
        username=client.username,
        password=client.password,
        topics=client.topics,
        expires_at=grant.valid_until,
    )
    return answer.model_copy(update={"feeds": urls_noted, "mqtt": credentials})


async def _keep_the_newest(session: AsyncSession, settings: Settings, grant_id: str) -> None:
    """Past ``mqtt_clients_per_grant`` live clients, the oldest are due for a cut."""
    older = (
        await session.scalars(
            select(GrantSession.id)
            .where(
                GrantSession.grant_id == grant_id,
                GrantSession.kind == "mqtt",
                GrantSession.cut_reason.is_(None),
            )
            .order_by(GrantSession.opened_at.desc(), GrantSession.id)
            .offset(settings.mqtt_clients_per_grant)
        )
    ).all()
    if older:
        await session.execute(
            update(GrantSession)
            .where(GrantSession.id.in_(older))
            .values(cut_reason="replaced", next_attempt_at=utcnow())
        )
        await session.commit()
