"""The SQLite registry's connections are kept for the next sessions, not opened per session.

Each new connection is a thread of its own, seven PRAGMAs and a cold page cache; with the
pool's default five, the all-in-one opened and closed 500 of them during the demo's replay
(registry_api.db.create_engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from registry_api.db import create_engine

BUSIEST = 14  # sessions at once: eight requests, the relay, the appliers and keepers


async def test_the_connections_of_the_busiest_moment_are_kept_for_the_next(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    opened: list[int] = []

    @event.listens_for(engine.sync_engine, "connect")
    def _count(_connection: Any, _record: Any) -> None:
        opened.append(1)

    sessions = async_sessionmaker(engine)
    all_in = asyncio.Barrier(BUSIEST)

    async def one() -> None:
        async with sessions() as session:
            assert (await session.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            await all_in.wait()  # every session holds its connection at once

    try:
        await asyncio.gather(*(one() for _ in range(BUSIEST)))
        assert len(opened) == BUSIEST
        all_in = asyncio.Barrier(BUSIEST)
        await asyncio.gather(*(one() for _ in range(BUSIEST)))
        assert len(opened) == BUSIEST, "a busy moment opened connections again"
    finally:
        await engine.dispose()
