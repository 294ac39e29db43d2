"""A refresh repeated for as long as a process runs: a failed round is logged, never fatal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def refresh_every(
    seconds: float, refresh: Callable[[], Awaitable[object]], *, what: str, log: logging.Logger
) -> None:
    """Call `refresh` every `seconds` until cancelled; a round that fails waits for the next."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await refresh()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("cannot refresh %s: %s", what, error)
