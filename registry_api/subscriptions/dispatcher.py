"""Sending the deliveries: claimed in batches, attempted, retried with exponential backoff.

Each API replica runs one dispatcher. It claims due deliveries with a lease
(``claimed_until``; on PostgreSQL ``FOR UPDATE SKIP LOCKED`` keeps two replicas off the same
rows) for its free places (``concurrency`` attempts at once, at most ``PER_ENDPOINT`` to one
subscription, so a slow endpoint holds up no other), attempts each, and writes its outcome:

* 2xx: delivered.
* 408, 429, 5xx, no answer (refused, reset, timed out): retried after
  ``retry_base_seconds * 2**(attempts-1)`` (at most ``retry_max_seconds``, jittered, at least a
  429/503's ``Retry-After``), until ``max_attempts``; then set aside as failed with the reason.
* Anything else (other 4xx, a redirect, an address that may not be called): set aside at once
  with the reason; retrying cannot cure it.

Delivery is at least once: a process that dies between an attempt and the write of its
outcome leaves the lease to run out, and the delivery is attempted again, with the same
``webhook-id``. Receivers deduplicate on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.subscriptions import signing
from registry_api.subscriptions.models import WebhookDelivery, WebhookSubscription
from registry_api.subscriptions.urls import RefusedUrl, check_resolved
from schemas.events import utcnow
from schemas.settings import NotificationTuning
from schemas.subscriptions import DeliveryState

log = logging.getLogger("feedgrid.webhooks")

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
ANSWER_EXCERPT_BYTES = 200
LEASE_MARGIN_SECONDS = 30.0
PURGE_EVERY_SECONDS = 300.0
GAUGE_EVERY_SECONDS = 10.0
PER_ENDPOINT = 4  # attempts in flight to one subscription at a time (per process)
STOP_GRACE_SECONDS = 2.0

ATTEMPTS = Counter(
    "feedgrid_webhook_attempts_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed: set aside)",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "feedgrid_webhook_attempt_seconds",
    "Duration of one webhook delivery attempt",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PENDING = Gauge("feedgrid_webhook_pending", "Webhook deliveries waiting for an attempt")
FAILED = Gauge(
    "feedgrid_webhook_failed", "Webhook deliveries set aside as failed (kept for display)"
)


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    payload: bytes
    attempts: int
    subscription_id: str
    url: str
    secret: str


@dataclass(frozen=True)
class Outcome:
    delivery: Claimed
    state: DeliveryState  # delivered, pending (retry) or failed
    status: int  # HTTP status; 0 when there was no answer
    error: str | None
    retry_after: float | None = None


def backoff_seconds(tuning: NotificationTuning, attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt: doubling, capped, jittered +-20%."""
    wait = min(tuning.retry_max_seconds, tuning.retry_base_seconds * 2 ** max(0, attempts - 1))
    return wait * random.uniform(0.8, 1.2)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


class WebhookDispatcher:
    def __init__(
        self,
        tuning: NotificationTuning,
        sessions: async_sessionmaker[AsyncSession],
        *,
        postgres: bool,
    ) -> None:
        self.tuning = tuning
        self.sessions = sessions
        self.postgres = postgres
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._wakeup = asyncio.Event()
        self._last_purge = 0.0
        self._last_gauge = 0.0
        self._running: set[asyncio.Task[None]] = set()
        self._per_subscription: defaultdict[str, int] = defaultdict(int)

    def notify(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        self._http = httpx.AsyncClient(
            timeout=self.tuning.attempt_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the endpoint is called directly
            limits=httpx.Limits(max_connections=self.tuning.concurrency),
        )
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            # Let attempts under way finish briefly; one cut off keeps its lease and is
            # attempted again once the lease runs out (the receiver may see it twice).
            _, cut = await asyncio.wait(self._running, timeout=STOP_GRACE_SECONDS)
            for task in cut:
                task.cancel()
            await asyncio.gather(*cut, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.fill()
                await self._housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("webhook delivery round failed, retrying: %s", error)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tuning.poll_seconds):
                    await self._wakeup.wait()

    # ------------------------------------------------------------------ deliveries in flight

    async def fill(self) -> int:
        """Claims due deliveries for the free places and starts each; returns how many.

        At most ``concurrency`` attempts run at once, and at most ``PER_ENDPOINT`` of them to
        one subscription: a slow or dead endpoint never holds up the others' deliveries."""
        free = self.tuning.concurrency - len(self._running)
        if free <= 0:
            return 0
        claimed = await self._claim(free)
        for delivery in claimed:
            self._per_subscription[delivery.subscription_id] += 1
            task = asyncio.create_task(self._deliver(delivery), name="webhook-delivery")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return len(claimed)

    async def _deliver(self, delivery: Claimed) -> None:
        try:
            outcome = await self._attempt(delivery)
            await self._record([outcome])
        except Exception as error:  # the lease runs out and the delivery is attempted again
            log.warning("webhook outcome not recorded, to be attempted again: %s", error)
        finally:
            self._per_subscription[delivery.subscription_id] -= 1
            if self._per_subscription[delivery.subscription_id] <= 0:
                del self._per_subscription[delivery.subscription_id]
            self._wakeup.set()  # a place is free

    async def _claim(self, places: int) -> list[Claimed]:
        now = utcnow()
        lease = now + timedelta(
            seconds=self.tuning.attempt_timeout_seconds * 2 + LEASE_MARGIN_SECONDS
        )
        due = (
            WebhookDelivery.state == DeliveryState.pending.value,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        async with self.sessions() as session:
            busy = [
                sid for sid, running in self._per_subscription.items() if running >= PER_ENDPOINT
            ]
            candidates = (
                select(WebhookDelivery.id, WebhookDelivery.subscription_id)
                .where(*due, WebhookDelivery.subscription_id.not_in(busy))
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(min(self.tuning.batch_size, places * PER_ENDPOINT))
            )
            if self.postgres:
                candidates = candidates.with_for_update(skip_locked=True)
            taken = defaultdict(int, self._per_subscription)
            ids: list[int] = []
            for delivery_id, subscription_id in (await session.execute(candidates)).all():
                if len(ids) < places and taken[subscription_id] < PER_ENDPOINT:
                    taken[subscription_id] += 1
                    ids.append(delivery_id)
            if not ids:
                await session.rollback()
                return []
            won = list(
                (
                    await session.scalars(
                        update(WebhookDelivery)
                        .where(WebhookDelivery.id.in_(ids), *due)
                        .values(claimed_until=lease)
                        .returning(WebhookDelivery.id)
                    )
                ).all()
            )
            rows = (
                await session.execute(
                    select(
                        WebhookDelivery.id,
                        WebhookDelivery.message_id,
                        WebhookDelivery.payload,
                        WebhookDelivery.attempts,
                        WebhookSubscription.id,
                        WebhookSubscription.url,
                        WebhookSubscription.secret,
                    )
                    .join(
                        WebhookSubscription,
                        WebhookSubscription.id == WebhookDelivery.subscription_id,
                    )
                    .where(WebhookDelivery.id.in_(won))
                    .order_by(WebhookDelivery.id)
                )
            ).all()
            await session.commit()
        return [Claimed(*row) for row in rows]

    async def _attempt(self, delivery: Claimed) -> Outcome:
        assert self._http is not None
        timestamp = int(time.time())
        headers = signing.headers(delivery.secret, delivery.message_id, timestamp, delivery.payload)
        began = time.perf_counter()
        try:
            await check_resolved(delivery.url)
            async with self._http.stream(
                "POST", delivery.url, content=delivery.payload, headers=headers
            ) as response:
                excerpt = b""
                async for chunk in response.aiter_bytes():
                    excerpt += chunk
                    if len(excerpt) >= ANSWER_EXCERPT_BYTES:
                        break
        except RefusedUrl as error:
            return Outcome(delivery, DeliveryState.failed, 0, f"not called: {error}")
        except (httpx.HTTPError, OSError) as error:
            reason = f"no answer: {type(error).__name__} {error}".strip()
            return Outcome(delivery, DeliveryState.pending, 0, reason[:300])
        except Exception as error:  # whatever it is, the other deliveries of the round go on
            log.info("webhook attempt failed unexpectedly: %r", error)
            return Outcome(delivery, DeliveryState.pending, 0, f"attempt failed: {error!r}"[:300])
        finally:
            ATTEMPT_SECONDS.observe(time.perf_counter() - began)
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(delivery, DeliveryState.delivered, status, None)
        said = excerpt[:ANSWER_EXCERPT_BYTES].decode("utf-8", "replace").strip()
        answer = f"the receiver answered {status}" + (f": {said}" if said else "")
        if status in RETRYABLE_STATUSES or status >= 500:
            return Outcome(
                delivery, DeliveryState.pending, status, answer[:300], _retry_after(response)
            )
        return Outcome(delivery, DeliveryState.failed, status, f"{answer} (not retried)"[:300])

    async def _record(self, outcomes: list[Outcome]) -> None:
        now = utcnow()
        by_subscription: dict[str, list[Outcome]] = {}
        async with self.sessions() as session:
            for outcome in outcomes:
                by_subscription.setdefault(outcome.delivery.subscription_id, []).append(outcome)
                attempts = outcome.delivery.attempts + 1
                values: dict[str, object] = {
                    "attempts": attempts,
                    "claimed_until": None,
                    "last_status": outcome.status,
                    "last_error": outcome.error,
                }
                state = outcome.state
                if state is DeliveryState.pending and attempts >= self.tuning.max_attempts:
                    state = DeliveryState.failed
                    values["last_error"] = (
                        f"gave up after {attempts} attempts; last: {outcome.error}"
                    )[:300]
                if state is DeliveryState.pending:
                    wait = backoff_seconds(self.tuning, attempts)
                    if outcome.retry_after is not None:
                        wait = max(wait, min(outcome.retry_after, self.tuning.retry_max_seconds))
                    values["next_attempt_at"] = now + timedelta(seconds=wait)
                else:
                    values["finished_at"] = now
                    values["next_attempt_at"] = None
                values["state"] = state.value
                ATTEMPTS.labels("retry" if state is DeliveryState.pending else state.value).inc()
                if state is DeliveryState.failed:
                    log.info(
                        "webhook delivery set aside",
                        extra={
                            "subscription": outcome.delivery.subscription_id,
                            "message_id": outcome.delivery.message_id,
                            "reason": values["last_error"],
                        },
                    )
                await session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == outcome.delivery.id,
                        WebhookDelivery.state == DeliveryState.pending.value,
                    )
                    .values(**values)
                )
            for subscription_id, group in by_subscription.items():
                await session.execute(
                    update(WebhookSubscription)
                    .where(WebhookSubscription.id == subscription_id)
                    .values(**_status_after(group, now, self.tuning.max_attempts))
                )
            await session.commit()

    async def _housekeeping(self) -> None:
        moment = time.monotonic()
        if moment - self._last_gauge > GAUGE_EVERY_SECONDS:
            self._last_gauge = moment
            async with self.sessions() as session:
                counts: dict[str, int] = {
                    state: count
                    for state, count in (
                        await session.execute(
                            select(WebhookDelivery.state, func.count())
                            .where(
                                WebhookDelivery.state.in_(
                                    [DeliveryState.pending.value, DeliveryState.failed.value]
                                )
                            )
                            .group_by(WebhookDelivery.state)
                        )
                    ).all()
                }
            PENDING.set(counts.get(DeliveryState.pending.value, 0))
            FAILED.set(counts.get(DeliveryState.failed.value, 0))
        if moment - self._last_purge > PURGE_EVERY_SECONDS:
            self._last_purge = moment
            cutoff = utcnow() - timedelta(hours=self.tuning.delivered_retention_hours)
            async with self.sessions() as session:
                await session.execute(
                    delete(WebhookDelivery).where(
                        WebhookDelivery.state != DeliveryState.pending.value,
                        WebhookDelivery.finished_at < cutoff,
                    )
                )
                await session.commit()


def _status_after(group: list[Outcome], now: datetime, max_attempts: int) -> dict[str, object]:
    """The subscription's status columns after a round's outcomes for it."""
    delivered = sum(1 for outcome in group if outcome.state is DeliveryState.delivered)
    failed_now = sum(
        1
        for outcome in group
        if outcome.state is DeliveryState.failed
        or (
            outcome.state is DeliveryState.pending and outcome.delivery.attempts + 1 >= max_attempts
        )
    )
    last = group[-1]
    values: dict[str, object] = {
        "last_attempt_at": now,
        "last_status": last.status,
        "last_error": last.error,
        "delivered_total": WebhookSubscription.delivered_total + delivered,
        "failed_total": WebhookSubscription.failed_total + failed_now,
    }
    if delivered == len(group):
        values["consecutive_failures"] = 0
    else:
        values["consecutive_failures"] = WebhookSubscription.consecutive_failures + (
            len(group) - delivered
        )
    if delivered:
        values["last_success_at"] = now
    return values
