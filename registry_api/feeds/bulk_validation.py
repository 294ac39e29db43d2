"""Validating bulk-import features, in this process or in a helper process.

Checking one feature (JSON parsing, the pydantic models, GB/T 28181 decoding, column values)
is pure CPU work and independent of every other feature; it is a third of a bulk import's
time. A large NDJSON import hands its chunks to one helper process, so that validation runs
on the second core while the event loop writes the previous chunks: the demo city (57,000
cameras) then fits in the 5-second budget. Everything that needs the import's state (which
departments exist, who may write them, duplicates within the batch) stays in the API process.

The helper is a process-wide singleton, started in the background when the API starts (a
spawned interpreter takes a second to import pydantic and shapely) and replaced if it dies;
without it, the same function runs in-process. A server process stops it in order before it
ends (``stop_helper``).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from infra.heap import collect_everything
from registry_api.feeds.documents import content_values
from registry_api.feeds.index.columns import IndexPart
from registry_api.feeds.problems import first_problem, validation_details
from schemas.feeds import FeedFeature

log = logging.getLogger("feedgrid.feeds.bulk")


@dataclass
class Checked:
    """One chunk checked: (index, column values) of the good features in order, (index,
    code, reason) of the bad ones, and the good ones' index columns (see ``IndexPart``)."""

    good: list[tuple[int, dict[str, Any]]]
    bad: list[tuple[int, str | None, str]]
    index_part: IndexPart


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
_stopped = False  # by stop_helper: the process is ending, no new helper
HELPERS = 1


def _code_of(item: Any) -> str | None:
    if isinstance(item, dict) and isinstance(item.get("properties"), dict):
        code = item["properties"].get("code")
        return code if isinstance(code, str) else None
    return None


def check_features(items: Sequence[Any], first_index: int) -> Checked:
    """Parses (bytes are NDJSON lines), validates and turns features into column values and
    index columns (the part of the index work that needs no state)."""
    good: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str | None, str]] = []
    for offset, item in enumerate(items):
        index = first_index + offset
        if item is None:
            continue
        if isinstance(item, bytes):
            try:
                item = orjson.loads(item)
            except orjson.JSONDecodeError as error:
                bad.append((index, None, f"not JSON: {error}"))
                continue
        try:
            feature = FeedFeature.model_validate(item)
        except ValidationError as error:
            bad.append((index, _code_of(item), first_problem(validation_details(error))))
            continue
        good.append((index, content_values(feature.properties, feature.geometry)))
    return Checked(good, bad, IndexPart.of(values for _, values in good))


def _check_in_helper(items: Sequence[Any], first_index: int) -> Checked:
    gc.disable()  # the helper only ever does this: no cyclic garbage worth scanning for
    return check_features(items, first_index)


def _ready() -> bool:
    return True


def _exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: the helper ends when the API process does, however it ended.

    A process killed by a signal runs no atexit handler, so without this the helper would
    outlive it (and hold its stdout open). Ctrl-C in a terminal, or a service manager's stop,
    reaches the whole process group: the helper leaves SIGINT and SIGTERM to the API, which
    shuts the pool down in order (else each Ctrl-C of `./deploy/up` printed the helper's
    KeyboardInterrupt traceback, and a helper ended by SIGTERM under its pool left the
    pool's semaphores behind: "resource_tracker: There appear to be 5 leaked semaphore
    objects" at exit).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def helper_pool() -> concurrent.futures.ProcessPoolExecutor | None:
    """The helper process pool, started on first call (in the background); None if it cannot."""
    global _pool
    with _pool_lock:
        if _pool is None and not _stopped:
            try:
                _pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=HELPERS,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_exit_with_parent,
                    initargs=(os.getpid(),),
                )
                _pool.submit(_ready)  # start the process and its imports now
            except (OSError, RuntimeError) as error:
                log.warning("no bulk-validation helper process: %s", error)
                return None
        return _pool


def discard_helper_pool() -> None:
    """Forget a broken pool; the next import starts a new one."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None


def submit(items: Sequence[Any], first_index: int) -> concurrent.futures.Future[Checked] | None:
    pool = helper_pool()
    if pool is None:
        return None
    try:
        return pool.submit(_check_in_helper, list(items), first_index)
    except (RuntimeError, concurrent.futures.BrokenExecutor):
        discard_helper_pool()
        return None


def stop_helper(*, wait: bool = True) -> None:
    """Shuts the helper down (and waits for it): for the end of a server process.

    uvicorn ends a server stopped by a signal by raising the signal again, which kills the
    process without running exit handlers. The pool's queues hold named semaphores; unless
    they are closed and dropped before then, multiprocessing's resource tracker outlives the
    process, finds them and warns "There appear to be 5 leaked semaphore objects" (it unlinks
    them itself). A stopped pool's queues are garbage in a reference cycle (with the threads
    that served them), frozen out of the collector's sight when the pool started before the
    process settled (``infra.heap``): so waiting also collects everything, or the warning came
    after most Ctrl-Cs of a ``./deploy/up`` that had imported the demo city. Waits for the
    chunk in hand, or the imports if the helper is still starting. At any other exit it runs
    without waiting (and multiprocessing's own exit handler finalizes the queues).
    """
    global _pool, _stopped
    with _pool_lock:
        pool, _pool, _stopped = _pool, None, True
    if pool is not None:
        pool.shutdown(wait=wait, cancel_futures=True)
        del pool
        if wait:
            collect_everything()


atexit.register(stop_helper, wait=False)


class HelperWarmup:
    """Runtime component: starts the helper process with the API (it takes a second)."""

    async def start(self) -> None:
        threading.Thread(target=helper_pool, name="bulk-helper-start", daemon=True).start()

    async def stop(self) -> None:
        """The helper is shared by every app of the process and ends with it."""
