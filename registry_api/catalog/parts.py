"""Catalog answers that come in several messages: one SN, items adding up to SumNum.

Parts wait in the registry database (so any API replica may receive any part) until the
answer is complete; then the caller applies the whole answer in one transaction and the parts
go. Waiting is bounded: at most ``MAX_OPEN_ANSWERS`` open answers per department, and a part
older than ``PART_EXPIRY`` is dropped (a platform that stops half-way sent nothing usable).
A part sent twice (same bytes) counts once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.catalog.models import catalog_parts_table
from registry_api.errors import ApiError, Unprocessable

log = logging.getLogger("feedgrid.catalog.parts")
parts = catalog_parts_table
PART_EXPIRY = timedelta(minutes=10)
MAX_OPEN_ANSWERS = 8


@dataclass
class AnswerState:
    received: int  # items received so far, this part included
    sum_num: int
    items: list[dict[str, str]] | None  # every item of the answer, once complete


async def drop_expired(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(delete(parts).where(parts.c.received_at < now - PART_EXPIRY))
    dropped = int(getattr(result, "rowcount", 0) or 0)
    if dropped:
        log.info("expired catalog parts dropped", extra={"parts": dropped})
    return dropped


async def add_part(
    session: AsyncSession,
    *,
    department: str,
    platform_id: str,
    sn: str,
    sum_num: int,
    body: bytes,
    items: list[dict[str, str]],
    now: datetime,
) -> AnswerState:
    """Records one part (not committed). Complete: the answer's items, its parts deleted."""
    await drop_expired(session, now)
    answer = (
        parts.c.owner == department,
        parts.c.platform_id == platform_id,
        parts.c.sn == sn,
    )
    existing = (
        await session.execute(
            select(parts.c.sum_num, parts.c.body_sha1, parts.c.item_count).where(*answer)
        )
    ).all()
    digest = hashlib.sha1(body).hexdigest()
    if any(row.sum_num != sum_num for row in existing):
        raise Unprocessable(
            f"SN {sn} was announced with SumNum {existing[0].sum_num}, this part says {sum_num}",
            code="sum_num_changed",
        )
    received = sum(row.item_count for row in existing)
    if any(row.body_sha1 == digest for row in existing):
        return AnswerState(received, sum_num, None)  # sent again: already counted
    if not existing:
        open_answers = await session.scalar(
            select(func.count()).select_from(
                select(parts.c.platform_id, parts.c.sn)
                .where(parts.c.owner == department)
                .distinct()
                .subquery()
            )
        )
        if int(open_answers or 0) >= MAX_OPEN_ANSWERS:
            raise ApiError(
                f"{MAX_OPEN_ANSWERS} catalog answers of this department are still incomplete; "
                f"finish them or wait {int(PART_EXPIRY.total_seconds() // 60)} minutes",
                status_code=429,
                code="too_many_open_answers",
            )
    received += len(items)
    if received > sum_num:
        raise Unprocessable(
            f"SN {sn}: {received} items received, more than SumNum {sum_num}",
            code="too_many_items",
        )
    if received < sum_num:
        await session.execute(
            insert(parts),
            [
                {
                    "owner": department,
                    "platform_id": platform_id,
                    "sn": sn,
                    "sum_num": sum_num,
                    "body_sha1": digest,
                    "item_count": len(items),
                    "items": items,
                    "received_at": now,
                }  # fmt: skip
            ],
        )
        return AnswerState(received, sum_num, None)
    stored = (
        await session.execute(select(parts.c["items"]).where(*answer).order_by(parts.c.id))
    ).scalars()
    everything: list[dict[str, Any]] = [item for part in stored for item in part]
    await session.execute(delete(parts).where(*answer))
    return AnswerState(received, sum_num, everything + items)
