from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from registry_api.dependencies import PrincipalDep, RuntimeDep, SessionDep
from registry_api.subscriptions import service
from schemas.identity import DEPARTMENT_CODE_PATTERN
from schemas.subscriptions import (
    DeliveryPage,
    DeliveryState,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionOut,
)

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])

SubscriptionId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SubscriptionCreated)
async def create_subscription(
    body: SubscriptionCreate, session: SessionDep, principal: PrincipalDep
) -> SubscriptionCreated:
    """Subscribe an endpoint to notification kinds of your department (dept_admin; the city
    admin for any department, or city-wide). Deliveries are signed the Standard Webhooks way
    (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`); the
    secret is in this answer only."""
    return await service.create_subscription(session, principal, body)


@router.get("", response_model=list[SubscriptionOut])
async def list_subscriptions(
    session: SessionDep,
    principal: PrincipalDep,
    department: Annotated[
        str | None,
        Query(pattern=DEPARTMENT_CODE_PATTERN, description="The city admin's filter"),
    ] = None,
) -> list[SubscriptionOut]:
    """Your department's subscriptions with their delivery status (never their secrets)."""
    return await service.list_subscriptions(session, principal, department)


@router.get("/{subscription_id}", response_model=SubscriptionOut)
async def get_subscription(
    subscription_id: SubscriptionId, session: SessionDep, principal: PrincipalDep
) -> SubscriptionOut:
    """One subscription: its endpoint, kinds and delivery status (last status, failures, the
    next attempt)."""
    return await service.get_subscription(session, principal, subscription_id)


@router.delete("/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_subscription(
    subscription_id: SubscriptionId, session: SessionDep, principal: PrincipalDep
) -> Response:
    """Stop notifying this endpoint; what was waiting for it is dropped. Audited."""
    await service.delete_subscription(session, principal, subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{subscription_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    subscription_id: SubscriptionId,
    session: SessionDep,
    principal: PrincipalDep,
    state: DeliveryState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryPage:
    """The newest deliveries to this endpoint: each notification's id (the `webhook-id`),
    state, attempts, last answer and next attempt; failed ones with the reason they were set
    aside."""
    return await service.list_deliveries(
        session, principal, subscription_id, state=state, limit=limit
    )


@router.post(
    "/{subscription_id}/ping", status_code=status.HTTP_202_ACCEPTED, response_model=DeliveryPage
)
async def ping_subscription(
    subscription_id: SubscriptionId,
    session: SessionDep,
    principal: PrincipalDep,
    runtime: RuntimeDep,
) -> DeliveryPage:
    """Send a signed `ping` to this endpoint now: checks the receiver and its secret."""
    page = await service.send_ping(session, principal, subscription_id)
    if runtime.webhooks is not None:
        runtime.webhooks.notify()
    return page
