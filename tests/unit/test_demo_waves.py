"""The replay's waves tell ``on_wave`` in order, each beside the next wave (deploy/demo_traffic)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from deploy.demo_traffic import ReplayedRequest, _after


async def test_each_wave_is_told_after_the_previous_one_has_ended() -> None:
    heard: list[str] = []

    async def on_wave(_: list[ReplayedRequest], latest: datetime | None, first: bool) -> None:
        name = "first" if first else "second"
        heard.append(f"{name} began")
        await asyncio.sleep(0.05 if first else 0)
        heard.append(f"{name} ended")

    told = asyncio.create_task(_after(None, on_wave, [], None, True))
    told = asyncio.create_task(_after(told, on_wave, [], None, False))
    await asyncio.sleep(0)  # both tasks started: the second waits for the first
    assert heard == ["first began"]
    await told
    assert heard == ["first began", "first ended", "second began", "second ended"]


async def test_a_wave_that_fails_fails_the_next_and_it_is_never_told() -> None:
    heard: list[bool] = []

    async def on_wave(_: list[ReplayedRequest], latest: datetime | None, first: bool) -> None:
        heard.append(first)
        if first:
            raise RuntimeError("the stream is down")

    told = asyncio.create_task(_after(None, on_wave, [], None, True))
    told = asyncio.create_task(_after(told, on_wave, [], None, False))
    with pytest.raises(RuntimeError, match="the stream is down"):
        await told
    assert heard == [True]
