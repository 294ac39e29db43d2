"""Receiving a department's platform catalog: check, assemble, apply, then report liveness.

One body is one MANSCDP message. A Response complete on its own (items == SumNum) or the last
part of a multi-message answer is applied in one transaction with its feed events (the outbox),
so a refused message leaves nothing half-written. After the commit the feeds are in this
process's index, and the channels' Status and ON/OFF/VLOST/DEFECT events are handed to the
liveness workers as heartbeat reports: the same topic, the same checks and the same
transitions as ``POST /v1/heartbeats``; the catalog never writes a feed's status itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from infra.heap import garbage_collector_paused, let_go, settle_when_resumed
from infra.kafka_producer import SharedProducer
from registry_api.catalog import parts
from registry_api.catalog.importer import Applied, ImportOptions, apply_items
from registry_api.catalog.items import ItemProblem, classify_items
from registry_api.catalog.manscdp import parse_catalog, require_media_type
from registry_api.catalog.models import catalog_nodes_table
from registry_api.errors import ApiError, Forbidden
from registry_api.feeds.heartbeats import record_heartbeats
from registry_api.feeds.service import require_department
from registry_api.feeds.spatial import DELTA_LIMIT, FeedIndex
from registry_api.identity.principal import Principal
from schemas.catalog import CatalogImportResult
from schemas.events import utcnow
from schemas.feeds import HeartbeatBatch, HeartbeatItem
from schemas.identity import Role

log = logging.getLogger("feedgrid.catalog")
nodes = catalog_nodes_table
HEARTBEAT_BATCH = 5_000  # reports per pass, which holds the event loop (20,000: 110-160 ms)
MESSAGES = Counter(
    "feedgrid_catalog_messages_total",
    "MANSCDP catalog messages taken, by kind and state (applied, waiting for more parts)",
    ["kind", "state"],
)
ITEMS = Counter(
    "feedgrid_catalog_items_total",
    "Catalog items of applied messages, by outcome",
    ["outcome"],
)
SECONDS = Histogram(
    "feedgrid_catalog_apply_seconds",
    "Time to check and apply one catalog message",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def require_catalog_writer(principal: Principal, department: str) -> None:
    """A department's gateway or admins post its catalog; the city admin any department's."""
    if principal.is_city_admin:
        return
    if principal.department == department and principal.has_any(Role.gateway, Role.dept_admin):
        return
    raise Forbidden(
        f"only the gateways and admins of department {department!r} (or the city admin) may "
        "post its catalog",
        code="not_catalog_writer",
    )


async def claim_platform(session: AsyncSession, department: str, platform_id: str) -> None:
    """A platform belongs to the first department that posted its catalog: another
    department posting under its DeviceID would touch that department's catalog."""
    statement = select(nodes.c.owner).where(
        nodes.c.device_id == platform_id, nodes.c.kind == "platform", nodes.c.owner != department
    )
    holder = (await session.execute(statement.limit(1))).scalar()
    if holder is not None:
        raise Forbidden(
            f"platform {platform_id} is department {holder}'s: a catalog may only describe "
            "your own platforms",
            code="foreign_device",
        )


def _problems(found: list[ItemProblem]) -> list[dict[str, Any]]:
    return [
        {"index": problem.index, "device_id": problem.device_id, "message": problem.message}
        for problem in found
    ]


async def receive_catalog(
    session: AsyncSession,
    index: FeedIndex,
    *,
    principal: Principal,
    department: str,
    body: bytes,
    content_type: str | None,
    options: ImportOptions,
) -> tuple[CatalogImportResult, Applied]:
    with garbage_collector_paused():  # as the bulk import: the many young objects
        started = time.perf_counter()
        require_media_type(content_type)
        require_catalog_writer(principal, department)
        await require_department(session, department)
        # Parsing and checking thousands of channels is pure CPU (half a second for 10,000
        # here): done on a worker thread, the loop keeps answering meanwhile.
        message = await asyncio.to_thread(parse_catalog, body)
        await claim_platform(session, department, message.device_id)
        notify = message.root == "Notify"
        now = utcnow()
        raw_items = message.items
        received = len(raw_items)
        complete = False
        if not notify:
            sum_num = message.sum_num or 0
            waiting = await _has_parts(session, department, message)
            if received < sum_num or waiting:
                state = await parts.add_part(
                    session, department=department, platform_id=message.device_id, sn=message.sn,
                    sum_num=sum_num, body=body, items=raw_items, now=now,
                )  # fmt: skip
                received = state.received
                if state.items is None:
                    accepted, rejected, skipped = await asyncio.to_thread(
                        classify_items, raw_items, platform_id=message.device_id, notify=False,
                        first_index=state.received - len(raw_items),
                    )  # fmt: skip
                    await session.commit()
                    MESSAGES.labels(message.root, "waiting").inc()
                    return _result(
                        "waiting", message, department, received, False, Applied(rejected=rejected),
                        skipped,
                    ), Applied()  # fmt: skip
                raw_items = state.items
            complete = True
        accepted, rejected, skipped = await asyncio.to_thread(
            classify_items, raw_items, platform_id=message.device_id, notify=notify
        )
        applied = await apply_items(
            session, department=department, platform_id=message.device_id, items=accepted,
            complete=complete, options=options, now=now, owners=index.owners,
            keep=[problem.device_id for problem in rejected if problem.device_id],
        )  # fmt: skip
        applied.rejected = sorted([*rejected, *applied.rejected], key=lambda problem: problem.index)
        await session.commit()
        if len(applied.rows) > DELTA_LIMIT:  # a big catalog: folded into the base now
            await index.apply_many_rows(applied.rows, applied.renderings)
            settle_when_resumed("big catalog")  # what it built lives on (infra/heap)
        elif applied.rows:
            index.apply_rows(applied.rows, applied.renderings)  # rendered before the commit
        log.info(
            "catalog applied",
            extra={
                "department": department, "platform": message.device_id, "sn": message.sn,
                "kind": message.root, "items": len(raw_items), "feeds_created": applied.created,
                "feeds_updated": applied.updated, "feeds_retired": applied.retired,
                "rejected": len(applied.rejected),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )  # fmt: skip
        result = _result("applied", message, department, received, complete, applied, skipped)
        MESSAGES.labels(message.root, "applied").inc()
        for outcome, count in (
            ("created", applied.created), ("updated", applied.updated + applied.revived),
            ("unchanged", applied.unchanged), ("retired", applied.retired),
            ("rejected", len(applied.rejected)), ("skipped", len(skipped)),
        ):  # fmt: skip
            ITEMS.labels(outcome).inc(count)
        if received > DELTA_LIMIT:  # items and feed rows (in the index now), a chunk at a time
            await let_go(raw_items, accepted, applied.rows)
        SECONDS.observe(time.perf_counter() - started)
        return result, applied


async def _has_parts(session: AsyncSession, department: str, message: Any) -> bool:
    """Whether earlier parts of this SN wait (this message then joins them)."""
    table = parts.parts
    statement = select(table.c.id).where(
        table.c.owner == department,
        table.c.platform_id == message.device_id,
        table.c.sn == message.sn,
    )
    return (await session.execute(statement.limit(1))).first() is not None


def _result(
    state: str,
    message: Any,
    department: str,
    received: int,
    complete: bool,
    applied: Applied,
    skipped: list[ItemProblem],
) -> CatalogImportResult:
    return CatalogImportResult.model_validate(
        {
            "state": state,
            "kind": message.root,
            "department": department,
            "platform": message.device_id,
            "sn": message.sn,
            "sum_num": message.sum_num,
            "received": received,
            "complete": complete,
            "channels": {
                "created": applied.created,
                "updated": applied.updated,
                "unchanged": applied.unchanged,
                "retired": applied.retired,
                "revived": applied.revived,
                "unplaced": applied.unplaced,
            },
            "nodes_written": applied.nodes_written,
            "nodes_retired": applied.nodes_retired,
            "rejected": _problems(applied.rejected),
            "skipped": _problems(skipped),
            "liveness": {"reported": 0},
        }
    )


async def report_liveness(
    result: CatalogImportResult,
    applied: Applied,
    *,
    index: FeedIndex,
    producer: SharedProducer,
    topic: str,
    topics_ready: asyncio.Event,
    principal: Principal,
) -> None:
    """Hands the channels' statuses to the liveness workers as heartbeat reports. The catalog
    is already stored: a broker that does not answer is said in the result, not an error."""
    reporter = f"gb28181:{result.platform}"
    reported = 0
    for begin in range(0, len(applied.liveness), HEARTBEAT_BATCH):
        chunk = applied.liveness[begin : begin + HEARTBEAT_BATCH]
        batch = HeartbeatBatch.model_construct(
            items=[
                HeartbeatItem.model_construct(
                    feed_id=feed_id, status="online" if status == "online" else "offline"
                )
                for feed_id, status in chunk
            ],
            reporter=reporter,
        )
        try:
            answer = await record_heartbeats(
                index=index, producer=producer, topic=topic, topics_ready=topics_ready,
                principal=principal, batch=batch,
            )  # fmt: skip
        except ApiError as error:
            result.liveness.error = error.message
            log.info("catalog status not reported", extra={"reason": error.message})
            break
        reported += answer.accepted
    result.liveness.reported = reported
