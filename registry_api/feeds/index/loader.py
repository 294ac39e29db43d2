"""Loading the index from the registry database: every feed (retired ones included) as one
snapshot and its rendered documents, read in chunks so a million feeds never sit in memory as
rows."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from infra.heap import return_free_memory
from registry_api.feeds.index.columns import Columns
from registry_api.feeds.index.records import FeedRecord, Vocabulary
from registry_api.feeds.index.snapshot import Snapshot
from registry_api.feeds.models import feeds_table
from registry_api.feeds.rendered import RenderedFeeds, render_rows

LOAD_CHUNK = 20_000


async def load_snapshot(
    sessions: async_sessionmaker[AsyncSession],
    owners: Vocabulary,
    tags: Vocabulary,
    rendered: RenderedFeeds,
) -> Snapshot:
    """Every feed in the database as a snapshot, its groups sorted (in worker threads); every
    feed's rendering goes into ``rendered`` (chunk by chunk: it may spill to its file)."""
    parts: list[Columns] = []
    async with sessions() as session:
        result = await session.stream(select(feeds_table).execution_options(yield_per=LOAD_CHUNK))
        async for chunk in result.mappings().partitions(LOAD_CHUNK):
            records = [FeedRecord.from_row(row) for row in chunk]
            parts.append(Columns.from_records(records, owners, tags))
            ids = [row["id"] for row in chunk]
            rendered.put_many(zip(ids, render_rows(chunk, owners), strict=True))
            del chunk, records, ids
            # The rows were read on the driver's thread, so freed there: handed back now, or
            # they stay resident (a million feeds left ~1 GiB behind) and the peak adds up.
            await asyncio.to_thread(return_free_memory)  # ctypes lets the GIL go
            await asyncio.sleep(0)  # a million feeds take a while: let the loop breathe
    base = await asyncio.to_thread(Snapshot, Columns.concat_all(parts))
    del parts
    await asyncio.to_thread(base.prepare_groups)
    await asyncio.to_thread(return_free_memory)
    return base
