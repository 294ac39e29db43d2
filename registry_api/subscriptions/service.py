"""Webhook subscriptions: made, listed, read and deleted by a department's admin; each with
the status of its deliveries. The secret is shown when the subscription is made, never again."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.audit.service import RegistryChange, record_registry_changes
from registry_api.errors import Forbidden, NotFound, Unprocessable
from registry_api.identity.models import Department
from registry_api.identity.principal import Principal
from registry_api.subscriptions import signing
from registry_api.subscriptions.models import WebhookDelivery, WebhookSubscription
from registry_api.subscriptions.notify import Notification
from registry_api.subscriptions.urls import RefusedUrl, check_url
from schemas.events import EventType, utcnow
from schemas.subscriptions import (
    DeliveryOut,
    DeliveryPage,
    DeliveryState,
    DeliveryStatus,
    NotificationKind,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionOut,
)

# A department may keep this many endpoints: each notification is written once per endpoint.
MAX_SUBSCRIPTIONS_PER_DEPARTMENT = 20


def _require_admin(principal: Principal, department: str | None) -> None:
    if department is None:
        if not principal.is_city_admin:
            raise Forbidden("a city-wide subscription is the city admin's", code="role_required")
    elif not principal.administers(department):
        raise Forbidden(
            "a department's subscriptions are managed by its dept_admin", code="role_required"
        )


def _may_see(principal: Principal, subscription: WebhookSubscription) -> bool:
    if principal.is_city_admin:
        return True
    return subscription.department_code is not None and principal.administers(
        subscription.department_code
    )


async def _status(session: AsyncSession, subscription: WebhookSubscription) -> DeliveryStatus:
    pending, next_attempt = (
        await session.execute(
            select(func.count(), func.min(WebhookDelivery.next_attempt_at)).where(
                WebhookDelivery.subscription_id == subscription.id,
                WebhookDelivery.state == DeliveryState.pending.value,
            )
        )
    ).one()
    return DeliveryStatus(
        last_attempt_at=subscription.last_attempt_at,
        last_success_at=subscription.last_success_at,
        last_status=subscription.last_status,
        last_error=subscription.last_error,
        consecutive_failures=subscription.consecutive_failures,
        delivered=subscription.delivered_total,
        failed=subscription.failed_total,
        pending=int(pending or 0),
        next_attempt_at=next_attempt,
    )


async def _out(session: AsyncSession, subscription: WebhookSubscription) -> SubscriptionOut:
    return SubscriptionOut(
        id=subscription.id,
        department=subscription.department_code,
        url=subscription.url,
        kinds=[NotificationKind(kind) for kind in subscription.kinds],
        description=subscription.description,
        created_at=subscription.created_at,
        created_by=subscription.created_by,
        status=await _status(session, subscription),
    )


async def create_subscription(
    session: AsyncSession, principal: Principal, body: SubscriptionCreate
) -> SubscriptionCreated:
    department = body.department or principal.department
    _require_admin(principal, department)
    if department is not None and await session.get(Department, department) is None:
        raise Unprocessable(f"department {department!r} does not exist", code="unknown_department")
    try:
        url = check_url(body.url)
    except RefusedUrl as error:
        raise Unprocessable(str(error), code="url_refused") from None
    secret = body.secret or signing.new_secret()
    try:
        signing.secret_key(secret)
    except ValueError as error:
        raise Unprocessable(f"the secret is not usable: {error}", code="bad_secret") from None
    held = await session.scalar(
        select(func.count())
        .select_from(WebhookSubscription)
        .where(
            WebhookSubscription.department_code.is_(None)
            if department is None
            else WebhookSubscription.department_code == department
        )
    )
    if (held or 0) >= MAX_SUBSCRIPTIONS_PER_DEPARTMENT:
        raise Unprocessable(
            f"a department keeps at most {MAX_SUBSCRIPTIONS_PER_DEPARTMENT} subscriptions",
            code="too_many_subscriptions",
        )
    subscription = WebhookSubscription(
        id=uuid.uuid4().hex,
        department_code=department,
        url=url,
        kinds=sorted({kind.value for kind in body.kinds}),
        secret=secret,
        description=body.description,
        created_at=utcnow(),
        created_by=principal.subject[:200],
        consecutive_failures=0,
        delivered_total=0,
        failed_total=0,
    )
    session.add(subscription)
    await session.flush()
    await record_registry_changes(
        session,
        [
            RegistryChange(
                EventType.SUBSCRIPTION_CREATED,
                principal.subject,
                department,
                "created",
                {"subscription_id": subscription.id, "url": url, "kinds": subscription.kinds},
            )
        ],
    )
    await session.commit()
    out = await _out(session, subscription)
    return SubscriptionCreated(**out.model_dump(), secret=secret)


async def list_subscriptions(
    session: AsyncSession, principal: Principal, department: str | None
) -> list[SubscriptionOut]:
    if principal.is_city_admin:
        query = select(WebhookSubscription)
        if department is not None:
            query = query.where(WebhookSubscription.department_code == department)
    else:
        own = department or principal.department
        if own is None:
            raise Forbidden("this needs a department", code="department_required")
        _require_admin(principal, own)
        query = select(WebhookSubscription).where(WebhookSubscription.department_code == own)
    rows = (await session.scalars(query.order_by(WebhookSubscription.created_at))).all()
    return [await _out(session, subscription) for subscription in rows]


async def load_subscription(
    session: AsyncSession, principal: Principal, subscription_id: str
) -> WebhookSubscription:
    subscription = await session.get(WebhookSubscription, subscription_id)
    if subscription is None or not _may_see(principal, subscription):
        # The same answer for "does not exist" and "not yours".
        raise NotFound(f"no subscription {subscription_id!r}", code="unknown_subscription")
    return subscription


async def get_subscription(
    session: AsyncSession, principal: Principal, subscription_id: str
) -> SubscriptionOut:
    return await _out(session, await load_subscription(session, principal, subscription_id))


async def delete_subscription(
    session: AsyncSession, principal: Principal, subscription_id: str
) -> None:
    subscription = await load_subscription(session, principal, subscription_id)
    await session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id)
    )
    await session.delete(subscription)
    await record_registry_changes(
        session,
        [
            RegistryChange(
                EventType.SUBSCRIPTION_DELETED,
                principal.subject,
                subscription.department_code,
                "deleted",
                {"subscription_id": subscription.id, "url": subscription.url},
            )
        ],
    )
    await session.commit()


async def list_deliveries(
    session: AsyncSession,
    principal: Principal,
    subscription_id: str,
    *,
    state: DeliveryState | None,
    limit: int,
) -> DeliveryPage:
    subscription = await load_subscription(session, principal, subscription_id)
    query = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state.value)
    rows = (await session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit))).all()
    return DeliveryPage(
        subscription_id=subscription.id,
        status=await _status(session, subscription),
        deliveries=[
            DeliveryOut(
                id=row.id,
                message_id=row.message_id,
                kind=NotificationKind(row.kind),
                state=DeliveryState(row.state),
                attempts=row.attempts,
                created_at=row.created_at,
                next_attempt_at=row.next_attempt_at,
                last_status=row.last_status,
                last_error=row.last_error,
                finished_at=row.finished_at,
            )
            for row in rows
        ],
    )


async def send_ping(
    session: AsyncSession, principal: Principal, subscription_id: str, now: datetime | None = None
) -> DeliveryPage:
    """Queues a ``ping`` to this endpoint only: a way to check the receiver and its secret."""
    subscription = await load_subscription(session, principal, subscription_id)
    note = Notification(
        NotificationKind.ping,
        (),
        {"subscription_id": subscription.id, "sent_by": principal.subject},
        occurred_at=now or utcnow(),
    )
    session.add(
        WebhookDelivery(
            subscription_id=subscription.id,
            message_id=note.message_id,
            kind=note.kind.value,
            payload=note.body(),
            created_at=note.occurred_at,
            state=DeliveryState.pending.value,
            attempts=0,
            next_attempt_at=note.occurred_at,
        )
    )
    await session.commit()
    return await list_deliveries(session, principal, subscription_id, state=None, limit=1)
