"""Loading the index from the registry database: every feed (retired ones included) as one
snapshot, read in chunks so a million feeds never sit in memory as ORM rows."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry_api.feeds.index.columns import Columns
from registry_api.feeds.index.records import RECORD_COLUMNS, FeedRecord, Vocabulary
from registry_api.feeds.index.snapshot import Snapshot

LOAD_CHUNK = 50_000


async def load_snapshot(
    sessions: async_sessionmaker[AsyncSession], owners: Vocabulary, tags: Vocabulary
) -> Snapshot:
    """Every feed in the database as a snapshot, its groups sorted (in worker threads)."""
    parts: list[Columns] = []
    async with sessions() as session:
        result = await session.stream(
            select(*RECORD_COLUMNS).execution_options(yield_per=LOAD_CHUNK)
        )
        async for chunk in result.mappings().partitions(LOAD_CHUNK):
            records = [FeedRecord.from_row(row) for row in chunk]
            parts.append(Columns.from_records(records, owners, tags))
    base = await asyncio.to_thread(Snapshot, Columns.concat_all(parts))
    await asyncio.to_thread(base.prepare_groups)
    return base
