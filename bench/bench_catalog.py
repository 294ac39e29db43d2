"""GB/T 28181 catalog import benchmark: 50,000 channels in one MANSCDP Response.

A department's platform posts its whole catalog (one GB2312 message, SumNum 50,000 plus its
NVRs and business group; every tenth channel without coordinates; Status on every channel) to
an API process on SQLite, as ``feedgrid catalog import`` does. Measured: the whole call
(parse, classify, feed rows with their outbox events, catalog nodes, the index, and the
Status reports handed to Kafka), then the same catalog again (every channel unchanged).
Baseline: the demo-city bulk import path (``POST /v1/feeds/bulk``, NDJSON) of the same number
of cameras in the same process. Target: <= 10 s for 50,000 items.

Meanwhile a second client asks ``GET /healthz`` every 5 ms: the longest answer during the
first import is how long the API answered nobody while it ran (baseline: the longest during
the bulk import).

Prints JSON lines on stdout; ``--quick`` imports 5,000 channels.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

from bench.bench_registry import ApiServer, create_departments, demo_city
from bench.common import console, emit, stop_cleanly_on_sigterm
from deploy.catalog_samples import synthetic_catalog
from registry_api.migrate import upgrade_registry

TARGET_SECONDS = 10.0
DEPARTMENT = "lz-cmb"


@contextmanager
def healthz_watched(url: str) -> Iterator[Callable[[], float]]:
    """``GET /healthz`` every 5 ms on a connection of its own while the block runs; yields a
    function giving the longest answer (ms) once the block has ended."""
    answers: list[float] = []
    done = threading.Event()

    def ask() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not done.is_set():
                started = time.perf_counter()
                http.get("/healthz").raise_for_status()
                answers.append((time.perf_counter() - started) * 1000)
                time.sleep(0.005)

    asking = threading.Thread(target=ask, name="healthz-watch", daemon=True)
    asking.start()
    time.sleep(0.2)  # the connection open and answered before the work starts
    try:
        yield lambda: max(answers, default=0.0)
    finally:
        done.set()
        asking.join()


def run(channels: int) -> None:
    body = synthetic_catalog(channels)
    console.print(f"catalog of {channels} channels: {len(body) / 1e6:.1f} MB (GB2312)")
    cameras = [
        feature
        for feature in demo_city(cameras=channels, sensors=0)
        if feature["properties"]["kind"] == "camera"
    ][:channels]
    ndjson = b"\n".join(orjson.dumps(feature) for feature in cameras)
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as directory:
        workdir = Path(directory)
        database_url = f"sqlite+aiosqlite:///{workdir / 'registry.db'}"
        upgrade_registry(database_url)
        with ApiServer(database_url, workdir, relay=False) as server, server.client() as client:
            create_departments(client)
            headers = {"Content-Type": "Application/MANSCDP+xml"}
            params = {"department": DEPARTMENT}
            with healthz_watched(server.url) as longest_during_catalog:
                started = time.perf_counter()
                first = client.post(
                    "/v1/catalog/manscdp", content=body, headers=headers, params=params
                )
                seconds = time.perf_counter() - started
            assert first.status_code == 200, first.text[:500]
            answer = first.json()
            assert answer["channels"]["created"] == channels, answer["channels"]
            started = time.perf_counter()
            again = client.post("/v1/catalog/manscdp", content=body, headers=headers, params=params)
            again_seconds = time.perf_counter() - started
            assert again.status_code == 200 and again.json()["channels"]["unchanged"] == channels
            with healthz_watched(server.url) as longest_during_bulk:
                started = time.perf_counter()
                bulk = client.post(
                    "/v1/feeds/bulk",
                    content=ndjson,
                    headers={"Content-Type": "application/x-ndjson"},
                )
                bulk_seconds = time.perf_counter() - started
            assert bulk.status_code == 200, bulk.text[:500]
    common = {"baseline": f"POST /v1/feeds/bulk of {len(cameras)} demo cameras (NDJSON)"}
    emit(
        f"catalog_import_{channels}_channels", seconds, "s", **common,
        baseline_value=round(bulk_seconds, 3), target=f"<= {TARGET_SECONDS:g} s",
        met=seconds <= TARGET_SECONDS, liveness_reported=answer["liveness"]["reported"],
        unplaced=answer["channels"]["unplaced"],
    )  # fmt: skip
    emit(
        f"catalog_import_{channels}_channels_longest_healthz", longest_during_catalog(), "ms",
        baseline=f"the longest GET /healthz during the bulk import of {len(cameras)} cameras",
        baseline_value=round(longest_during_bulk(), 1),
        note="GET /healthz every 5 ms from a second client while the catalog is imported",
    )  # fmt: skip
    emit(
        f"catalog_reimport_{channels}_channels_unchanged", again_seconds, "s", **common,
        baseline_value=round(bulk_seconds, 3), target=f"<= {TARGET_SECONDS:g} s",
        met=again_seconds <= TARGET_SECONDS,
    )  # fmt: skip


def main() -> None:
    stop_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 channels instead of 50,000")
    parser.add_argument("--channels", type=int, default=None, help="how many channels")
    args = parser.parse_args()
    run(args.channels or (5_000 if args.quick else 50_000))


if __name__ == "__main__":
    main()
