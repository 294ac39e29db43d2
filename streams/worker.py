"""`feedgrid worker` (scale mode): the agents and the sink in a process of their own.

Run as ``feedgrid worker`` or ``python -m streams.worker``; settings come from the FEEDGRID_*
environment. Workers sharing a topic prefix form one consumer group and split the partitions.
SIGTERM or SIGINT stops the worker gracefully (unfinished batches are delivered again).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from infra.event_loop import run as run_loop
from infra.heap import tune_collector
from infra.loop_watch import watching_loop
from schemas.settings import Settings, get_settings
from streams.app import run_stream_worker
from streams.context import build_stream_context
from streams.tuning import StreamTuning, load_tuning

log = logging.getLogger("feedgrid.worker")


async def serve_worker(settings: Settings, tuning: StreamTuning | None = None) -> None:
    tuning = tuning or load_tuning()
    if tuning.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(tuning.metrics_port, addr="127.0.0.1")
    tune_collector()
    context = build_stream_context(settings, tuning)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with watching_loop(settings.loop_blocked_report_ms, role="worker"):
        await run_stream_worker(context, stop)
    log.info("stream worker stopped")


def run_worker(settings: Settings) -> None:
    from infra.structured_logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    run_loop(serve_worker(settings), settings.event_loop)


def main() -> None:
    run_worker(get_settings())


if __name__ == "__main__":
    main()
