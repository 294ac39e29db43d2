"""Feed registry benchmark: bulk import, 1,000,000 feeds, spatial and filtered queries vs PostGIS.

Prints one JSON line per figure (``{"name", "value", "unit", "baseline", "baseline_value",
"target", "met", ...}``) on stdout; progress goes to stderr.

1. The demo city (57,000 cameras + 3,000 sensors, ``deploy.seed``) in one ``POST
   /v1/feeds/bulk`` to an API process on SQLite; baseline: the same call on PostgreSQL.
2. 1,000,000 feeds imported through the API (the demo city repeated with moved positions and
   new codes) in bulk calls of one demo city each; the API process's resident memory.
3. 1,000 random queries of each kind over HTTP against that process: ``near`` 500 m, ``sees``,
   a 10 km2 polygon (``within``), a filtered list; p50/p99. Baseline: PostGIS (GiST indexes)
   on the same rows with the same queries, run over asyncpg in the same run.
4. The same queries against the in-memory index alone (no HTTP, no page rows).

``--quick`` shrinks everything (a smoke run of a minute or two). The API processes run the
API role only (no embedded Faust worker); in the 1,000,000 import the outbox relay is off
(the events wait in the outbox) so that the import is measured alone.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
import shapely
from rich.progress import Progress

from bench.common import (
    ADMIN_TOKEN,
    KAFKA,
    Feature,
    PostgresDatabase,
    Query,
    console,
    emit,
    free_port,
    make_queries,
    proc_status,
    progress_bar,
    require_kafka,
    require_postgres,
    stop_cleanly_on_sigterm,
    topic_prefix,
)
from deploy.seed.departments import departments
from deploy.seed.feeds import generate_feeds
from registry_api.feeds.geodesy import fov_polygons, offset_points
from registry_api.migrate import upgrade_registry

POINT = "ST_SetSRID(ST_MakePoint($1, $2), 4326)"
NDJSON = {"Content-Type": "application/x-ndjson"}


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q))


# ---------------------------------------------------------------------------- the API process


class ApiServer:
    """``uvicorn registry_api.app:app`` in a child process (the API role, as deployed)."""

    def __init__(self, database_url: str, workdir: Path, *, relay: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            FEEDGRID_DATABASE_URL=database_url,
            FEEDGRID_ADMIN_TOKEN=ADMIN_TOKEN,
            FEEDGRID_KAFKA_BOOTSTRAP=KAFKA,
            FEEDGRID_TOPIC_PREFIX=topic_prefix(),
            FEEDGRID_RELAY_ENABLED="true" if relay else "false",
            FEEDGRID_EMBEDDED_WORKER="false",
            FEEDGRID_CLICKHOUSE_URL=f"chdb://{workdir / 'analytics'}",
            FEEDGRID_VAR_DIR=str(workdir / "var"),
            FEEDGRID_SIGNING_KEY_DIR=str(workdir / "keys"),
            FEEDGRID_LOG_LEVEL="WARNING",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ApiServer:
        command = [
            sys.executable, "-m", "uvicorn", "registry_api.app:app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=self.env, start_new_session=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API process exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the API process did not come up")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT: exit handlers run (see bench_access.api_server)
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def memory_mb(self) -> tuple[float, float]:
        """(resident now, peak resident) of the API process in MiB."""
        assert self.process is not None
        fields = proc_status(self.process.pid)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def helpers_mb(self) -> float:
        """Resident memory of the API process's children (the bulk-validation helper)."""
        assert self.process is not None
        total = 0.0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += int(proc_status(int(child))["VmRSS"].split()[0]) / 1024
        return total

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=600
        )


def create_departments(client: httpx.Client) -> None:
    for department in departments():
        response = client.post("/v1/departments", json=department)
        assert response.status_code in (201, 409), response.text


# ---------------------------------------------------------------------------- the data


def demo_city(cameras: int, sensors: int) -> list[Feature]:
    console.print(f"generating the demo city: {cameras} cameras, {sensors} sensors")
    return generate_feeds(cameras=cameras, sensors=sensors).features


def moved_copy(features: list[Feature], copy_number: int) -> list[Feature]:
    """The city again with new codes, stream URLs and positions moved up to 300 m."""
    if copy_number == 0:
        return features
    rng = np.random.default_rng(copy_number)
    east = rng.uniform(-300, 300, len(features))
    north = rng.uniform(-300, 300, len(features))
    lon = np.array([f["geometry"]["coordinates"][0] for f in features])
    lat = np.array([f["geometry"]["coordinates"][1] for f in features])
    new_lon, new_lat = offset_points(lon, lat, east, north)
    moved = []
    for i, feature in enumerate(features):
        properties = dict(feature["properties"])
        code = properties["code"]
        if properties["kind"] == "camera":  # digits 7-8 (basic unit) tell the copies apart
            code = f"{code[:6]}{copy_number:02d}{code[8:]}"
        else:
            code = f"{code}-c{copy_number}"
        dlon, dlat = float(new_lon[i] - lon[i]), float(new_lat[i] - lat[i])
        stream = dict(properties["stream"])
        stream["url"] = (
            f"{stream['url']}/c{copy_number}"
            if "?" not in stream["url"]
            else f"{stream['url']}&c={copy_number}"
        )
        stream["media_path"] = f"{properties['owner']}/{code}"
        catalog = dict(properties["catalog"])
        catalog["resource_code"] = f"{catalog['resource_code']}-{copy_number}"
        properties.update(code=code, stream=stream, catalog=catalog)
        if properties.get("coverage"):
            ring = properties["coverage"]["coordinates"][0]
            properties["coverage"] = {
                "type": "Polygon",
                "coordinates": [[[round(x + dlon, 7), round(y + dlat, 7)] for x, y in ring]],
            }
        moved.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Point",
                    "coordinates": [round(float(new_lon[i]), 7), round(float(new_lat[i]), 7)],
                },
                "properties": properties,
            }
        )
    return moved


def city_chunks(base: list[Feature], total: int) -> Iterator[list[Feature]]:
    """``total`` features: copy 0, 1, 2, ... of the city, the last one cut short."""
    copies = math.ceil(total / len(base))
    for number in range(copies):
        chunk = moved_copy(base, number)
        yield chunk[: total - number * len(base)] if (number + 1) * len(base) > total else chunk


def ndjson(features: list[Feature]) -> bytes:
    return b"\n".join(orjson.dumps(feature) for feature in features)


# ---------------------------------------------------------------------------- queries


def time_http_queries(
    client: httpx.Client, queries: list[Query], limit: int, progress: Progress, label: str
) -> tuple[list[float], float]:
    task = progress.add_task(label, total=len(queries))
    latencies = []
    results = 0
    for query in queries:
        started = time.perf_counter()
        if query.kind == "polygon":
            response = client.post("/v1/feeds/search", json={**query.params, "limit": limit})
        else:
            response = client.get("/v1/feeds", params={**query.params, "limit": limit})
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text[:500]
        results += response.json()["total"]
        progress.advance(task)
    return latencies, results / len(queries)


# ---------------------------------------------------------------------------- PostGIS


POSTGIS_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE TABLE staging (
    id text, owner text, kind text, industry text, type_code text, region text, sharing text,
    status text, tags text[], name text, lon float8, lat float8, fov bytea, coverage bytea
);
"""
POSTGIS_TABLE = """
CREATE TABLE feeds AS SELECT
    id, owner, kind, industry, type_code, region, sharing, status, tags, name,
    ST_SetSRID(ST_MakePoint(lon, lat), 4326) AS geom,
    ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography AS geog,
    ST_GeomFromWKB(fov, 4326) AS fov,
    ST_GeomFromWKB(coverage, 4326) AS coverage
FROM staging;
DROP TABLE staging;
ALTER TABLE feeds ADD PRIMARY KEY (id);
CREATE INDEX feeds_geom ON feeds USING gist (geom);
CREATE INDEX feeds_geog ON feeds USING gist (geog);
CREATE INDEX feeds_fov ON feeds USING gist (fov);
CREATE INDEX feeds_coverage ON feeds USING gist (coverage);
CREATE INDEX feeds_owner ON feeds (owner, id);
CREATE INDEX feeds_kind ON feeds (kind, id);
CREATE INDEX feeds_industry ON feeds (industry, id);
CREATE INDEX feeds_sharing ON feeds (sharing, id);
CREATE INDEX feeds_status ON feeds (status, id);
CREATE INDEX feeds_tags ON feeds USING gin (tags);
ANALYZE feeds;
"""


def staging_records(features: list[Feature], first_id: int) -> list[tuple[Any, ...]]:
    count = len(features)
    lon = np.array([f["geometry"]["coordinates"][0] for f in features])
    lat = np.array([f["geometry"]["coordinates"][1] for f in features])
    fov = np.full((count, 3), np.nan)
    for i, feature in enumerate(features):
        view = feature["properties"]["fov"]
        if view:
            fov[i] = (view["heading"], view["angle"], view["range_m"])
    has_fov = ~np.isnan(fov[:, 0])
    polygons = np.full(count, None, dtype=object)
    polygons[has_fov] = fov_polygons(
        lon[has_fov], lat[has_fov], fov[has_fov, 0], fov[has_fov, 1], fov[has_fov, 2]
    )
    fov_wkb = shapely.to_wkb(polygons)
    records = []
    for i, feature in enumerate(features):
        p = feature["properties"]
        code = p["code"]
        camera = p["kind"] == "camera"
        coverage = (
            shapely.to_wkb(shapely.geometry.shape(p["coverage"])) if p.get("coverage") else None
        )
        records.append(
            (
                f"{first_id + i:012d}", p["owner"], p["kind"], code[8:10] if camera else None,
                code[10:13] if camera else None, code[:8] if camera else None,
                p["sharing"]["class"],
                "unknown", p["tags"], p["name"], float(lon[i]), float(lat[i]), fov_wkb[i], coverage,
            )
        )  # fmt: skip
    return records


async def load_postgis(
    dsn: str, chunks: Callable[[], Iterator[list[Feature]]], total: int, progress: Progress
) -> float:
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await connection.execute(POSTGIS_SCHEMA)
        task = progress.add_task("PostGIS: loading the same feeds", total=total)
        loaded = 0
        for chunk in chunks():
            records = staging_records(chunk, loaded)
            await connection.copy_records_to_table("staging", records=records)
            loaded += len(chunk)
            progress.update(task, completed=loaded)
        index_task = progress.add_task("PostGIS: building GiST/B-tree indexes", total=1)
        await connection.execute(POSTGIS_TABLE)
        progress.advance(index_task)
    finally:
        await connection.close()
    return time.perf_counter() - started


def postgis_statement(query: Query, limit: int) -> tuple[str, list[Any]]:
    """The PostGIS twin of an API query: the same page (limit, order) and the same total."""
    if query.kind == "near":
        lon, lat, metres = (float(value) for value in query.params["near"].split(","))
        return (
            f"WITH hits AS (SELECT id, ST_Distance(geog, {POINT}::geography) AS d FROM feeds "
            f"WHERE ST_DWithin(geog, {POINT}::geography, $3)) "
            "SELECT id, d, count(*) OVER () FROM hits ORDER BY d, id LIMIT $4",
            [lon, lat, metres, limit],
        )
    if query.kind == "sees":
        lon, lat = (float(value) for value in query.params["sees"].split(","))
        return (
            f"SELECT id, count(*) OVER () FROM feeds WHERE ST_Intersects(fov, {POINT}) "
            f"OR ST_Intersects(coverage, {POINT}) ORDER BY id LIMIT $3",
            [lon, lat, limit],
        )
    if query.kind == "polygon":
        wkt = shapely.geometry.shape(query.params["geometry"]).wkt
        return (
            "SELECT id, count(*) OVER () FROM feeds "
            "WHERE ST_Intersects(geom, ST_GeomFromText($1, 4326)) ORDER BY id LIMIT $2",
            [wkt, limit],
        )
    columns = {
        "department": "owner",
        "kind": "kind",
        "industry": "industry",
        "sharing": "sharing",
        "status": "status",
    }
    clauses, values = [], []
    for name, value in query.params.items():
        values.append(value)
        position = f"${len(values)}"
        clauses.append(
            f"{position} = ANY(tags)" if name == "tag" else f"{columns[name]} = {position}"
        )
    values.append(limit)
    return (
        f"SELECT id, count(*) OVER () FROM feeds WHERE {' AND '.join(clauses)} "
        f"ORDER BY id LIMIT ${len(values)}",
        values,
    )


async def time_postgis_queries(
    dsn: str, queries: list[Query], limit: int, progress: Progress, label: str
) -> list[float]:
    connection = await asyncpg.connect(dsn)
    latencies = []
    task = progress.add_task(label, total=len(queries))
    try:
        for query in queries:
            statement, arguments = postgis_statement(query, limit)
            started = time.perf_counter()
            await connection.fetch(statement, *arguments)
            latencies.append((time.perf_counter() - started) * 1000)
            progress.advance(task)
    finally:
        await connection.close()
    return latencies


# ---------------------------------------------------------------------------- the index alone


def time_index_queries(
    database_url: str, queries: dict[str, list[Query]], limit: int
) -> dict[str, list[float]]:
    from registry_api.db import create_engine, session_factory
    from registry_api.feeds.service import index_query
    from registry_api.feeds.spatial import FeedIndex
    from schemas.feeds import FeedFilters, FeedSearch

    async def run() -> dict[str, list[float]]:
        engine = create_engine(database_url)
        index = FeedIndex(session_factory(engine))
        await index.start()
        await engine.dispose()
        timings: dict[str, list[float]] = {}
        for name, batch in queries.items():
            samples = []
            for query in batch:
                filters = (
                    FeedSearch.model_validate(query.params)
                    if query.kind == "polygon"
                    else FeedFilters.model_validate(query.params)
                )
                started = time.perf_counter()
                index.search(index_query(filters), limit=limit)
                samples.append((time.perf_counter() - started) * 1000)
            timings[name] = samples
        return timings

    return asyncio.run(run())


# ---------------------------------------------------------------------------- the run


def bench_demo_import(workdir: Path, cameras: int, sensors: int) -> None:
    features = demo_city(cameras, sensors)
    body = ndjson(features)
    timings: dict[str, float] = {}
    postgres = PostgresDatabase.create("bench_registry_demo")
    try:
        for backend, url in (
            ("sqlite", f"sqlite+aiosqlite:///{workdir / 'demo.db'}"),
            ("postgresql", postgres.sqlalchemy_url),
        ):
            upgrade_registry(url)
            with ApiServer(url, workdir, relay=True) as server, server.client() as client:
                create_departments(client)
                started = time.perf_counter()
                response = client.post("/v1/feeds/bulk", content=body, headers=NDJSON)
                timings[backend] = time.perf_counter() - started
                result = response.json()
                assert response.status_code == 200 and not result["rejected"], response.text[:1000]
                assert result["created"] == len(features)
                console.print(f"demo city on {backend}: {timings[backend]:.2f} s")
    finally:
        postgres.drop()
    emit(
        "bulk_import_demo_city_http_sqlite",
        timings["sqlite"],
        "s",
        features=len(features),
        cameras=cameras,
        sensors=sensors,
        baseline="the same call on PostgreSQL",
        baseline_value=round(timings["postgresql"], 3),
        target="<= 5 s for 57,000 cameras",
        met=timings["sqlite"] <= 5.0 if cameras >= 57_000 else None,
    )


def bench_scale(
    workdir: Path,
    base: list[Feature],
    total: int,
    query_count: int,
    limit: int,
    skip_postgis: bool,
    reuse: bool,
) -> None:
    database = workdir / "scale.db"
    url = f"sqlite+aiosqlite:///{database}"
    imported = reuse and database.exists()
    upgrade_registry(url)
    queries = make_queries(base, query_count)
    with (
        ApiServer(url, workdir, relay=False) as server,
        server.client() as client,
        progress_bar() as progress,
    ):
        if imported:
            total = client.get("/v1/feeds", params={"limit": 1}).json()["total"]
            console.print(f"reusing {database} ({total:,} feeds)")
        else:
            import_city(client, base, total, progress)
        rss_after_import, _ = server.memory_mb()
        http: dict[str, tuple[list[float], float]] = {}
        for name, batch in queries.items():
            http[name] = time_http_queries(client, batch, limit, progress, f"API: {name}")
        time_feed_points(client, total)
        rss_now, rss_peak = server.memory_mb()
        helpers = server.helpers_mb()
        report_rendered(client, total)
    memory = (rss_after_import, rss_now, rss_peak, helpers)
    report_scale(url, workdir, base, total, queries, limit, skip_postgis, http, memory)


def time_feed_points(client: httpx.Client, total: int) -> None:
    """One dashboard map load: every feed as compact columns (GET /v1/feeds/points), gzip."""
    started = time.perf_counter()
    response = client.get("/v1/feeds/points", headers={"Accept-Encoding": "gzip"})
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text[:1000]
    emit(
        "feed_points_all_http",
        seconds,
        "s",
        feeds=total,
        points=response.json()["count"],
        wire_mib=round(response.num_bytes_downloaded / 2**20, 1),
        json_mib=round(len(response.content) / 2**20, 1),
        note="the dashboard map's one request, decoded by the client",
    )


def import_city(client: httpx.Client, base: list[Feature], total: int, progress: Progress) -> None:
    create_departments(client)
    task = progress.add_task(f"importing {total:,} feeds over HTTP", total=total)
    import_seconds = 0.0
    for chunk in city_chunks(base, total):
        body = ndjson(chunk)
        started = time.perf_counter()
        response = client.post("/v1/feeds/bulk", content=body, headers=NDJSON)
        import_seconds += time.perf_counter() - started
        assert response.status_code == 200, response.text[:1000]
        assert not response.json()["rejected"], response.json()["rejected"][:3]
        progress.advance(task, len(chunk))
    emit(
        "import_feeds_http_sqlite",
        import_seconds,
        "s",
        feeds=total,
        chunk_features=len(base),
        relay="off during the import (events wait in the outbox)",
        target="<= 120 s for 1,000,000" if total >= 1_000_000 else None,
        met=import_seconds <= 120 if total >= 1_000_000 else None,
    )


def report_rendered(client: httpx.Client, total: int) -> None:
    """How much of the API process the rendered feed documents hold (its /metrics)."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("feedgrid_rendered_feeds", "feedgrid_rendered_feed_bytes"):
            values[name] = float(value)
    feeds = values.get("feedgrid_rendered_feeds", 0.0)
    stored = values.get("feedgrid_rendered_feed_bytes", 0.0)
    emit(
        "rendered_documents_mib", stored / 2**20, "MiB", feeds=total, rendered_feeds=int(feeds),
        bytes_per_feed=round(stored / feeds, 1) if feeds else None,
        note="documents rendered once and kept as bytes (part of api_process_rss)",
    )  # fmt: skip


def report_scale(
    url: str,
    workdir: Path,
    base: list[Feature],
    total: int,
    queries: dict[str, list[Query]],
    limit: int,
    skip_postgis: bool,
    http: dict[str, tuple[list[float], float]],
    memory: tuple[float, float, float, float],
) -> None:
    rss_after_import, rss_now, rss_peak, helpers = memory
    emit(
        "api_process_rss",
        rss_now,
        "MiB",
        feeds=total,
        after_import_mib=round(rss_after_import, 1),
        peak_mib=round(rss_peak, 1),
        role="API only (no embedded worker)",
        bulk_helper_process_mib=round(helpers, 1),
        target="<= 1536 MiB at 1,000,000 feeds",
        met=rss_peak <= 1536 if total >= 1_000_000 else None,
    )

    postgis: dict[str, list[float]] = {}
    if not skip_postgis:
        database = PostgresDatabase.create("bench_postgis")
        try:
            with progress_bar() as progress:
                load_seconds = asyncio.run(
                    load_postgis(database.dsn, lambda: city_chunks(base, total), total, progress)
                )
                emit(
                    "postgis_load_and_index",
                    load_seconds,
                    "s",
                    feeds=total,
                    note="COPY + GiST/B-tree builds; baseline figure only",
                )
                for name, batch in queries.items():
                    postgis[name] = asyncio.run(
                        time_postgis_queries(
                            database.dsn, batch, limit, progress, f"PostGIS: {name}"
                        )
                    )
        finally:
            database.drop()

    for name, (latencies, mean_total) in http.items():
        baseline = postgis.get(name)
        p99 = percentile(latencies, 99)
        emit(
            f"{name}_p99_http",
            p99,
            "ms",
            feeds=total,
            queries=len(latencies),
            page_limit=limit,
            p50_ms=round(percentile(latencies, 50), 2),
            mean_matches=round(mean_total, 1),
            baseline="PostGIS 3 (GiST), same rows and queries, asyncpg, no HTTP"
            if baseline
            else None,
            baseline_value=round(percentile(baseline, 99), 3) if baseline else None,
            baseline_p50_ms=round(percentile(baseline, 50), 2) if baseline else None,
            target="<= 20 ms at 1,000,000 feeds",
            met=p99 <= 20 if total >= 1_000_000 else None,
        )

    console.print("timing the in-memory index alone")
    for name, latencies in time_index_queries(url, queries, limit).items():
        emit(
            f"{name}_p99_index_only",
            percentile(latencies, 99),
            "ms",
            feeds=total,
            p50_ms=round(percentile(latencies, 50), 3),
            note="FeedIndex.search in process, no HTTP or page rows",
        )


def main(argv: list[str] | None = None) -> int:
    stop_cleanly_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--feeds", type=int, help="feeds for the scale part (default 1,000,000)")
    parser.add_argument("--queries", type=int, help="queries of each kind (default 1,000)")
    parser.add_argument("--limit", type=int, default=100, help="page size of the queries")
    parser.add_argument("--skip-demo", action="store_true", help="skip the demo-city import")
    parser.add_argument("--skip-scale", action="store_true", help="skip the import + query part")
    parser.add_argument("--skip-postgis", action="store_true", help="no PostGIS baseline")
    parser.add_argument("--workdir", type=Path, help="keep the databases here")
    parser.add_argument(
        "--reuse", action="store_true", help="with --workdir: query the imported database again"
    )
    args = parser.parse_args(argv)
    require_kafka()
    cameras, sensors = (5_700, 300) if args.quick else (57_000, 3_000)
    total = args.feeds or (60_000 if args.quick else 1_000_000)
    query_count = args.queries or (200 if args.quick else 1_000)
    if not args.skip_demo or (not args.skip_scale and not args.skip_postgis):
        require_postgres(
            "the demo import's PostgreSQL figure and the PostGIS baseline",
            "--skip-demo --skip-postgis",
        )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-registry-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_demo:
            bench_demo_import(workdir, cameras, sensors)
        if not args.skip_scale:
            base = demo_city(cameras, sensors) if args.quick else demo_city(57_000, 3_000)
            bench_scale(
                workdir, base, total, query_count, args.limit, args.skip_postgis, args.reuse
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
