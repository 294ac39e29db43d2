"""`feedgrid migrate` for ClickHouse: applies the numbered DDL files once each, in order.

Applied versions and the checksum of their file are kept in ``schema_migrations``. Every
statement is ``IF NOT EXISTS``, so a migration interrupted half-way is simply applied again.
A file edited after it was applied is refused: a schema change is a new numbered file.

A view marked for backfill (``-- backfill: by month of <column>``) has its table filled from
the rows its source already held, a month at a time with a progress line each, before the
migration is recorded: an interrupted backfill runs again on the next start (a table of sums,
``..., rebuilding <bucket>``, has each month's rows deleted before the month goes in).
"""

from __future__ import annotations

import logging
import time

from clickhouse_connect.driver.client import Client

from infra.clickhouse import cluster_name, connect
from schemas.clickhouse import (
    BOOTSTRAP_VERSION,
    Backfill,
    Migration,
    Topology,
    backfill_statements,
    load_migrations,
    render_migration,
)

log = logging.getLogger("feedgrid.clickhouse.migrations")


class MigrationError(RuntimeError):
    """The stored schema disagrees with the DDL files."""


def topology_for(url: str) -> Topology:
    return Topology(cluster=cluster_name(url))


def applied_migrations(client: Client) -> dict[int, str]:
    rows = client.query(
        "SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version"
    ).result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def _apply(client: Client, migration: Migration, topology: Topology) -> None:
    for statement in render_migration(migration, topology):
        client.command(statement)
    for item in migration.objects:
        backfill = backfill_statements(item, topology)
        if backfill is not None:
            _backfill(client, item.name, backfill)


def _backfill(client: Client, view: str, backfill: Backfill) -> None:
    months = [int(row[0]) for row in client.query(backfill.months).result_rows]
    if not months:
        return
    log.info(
        "backfilling %s from %s: %d month(s) of stored rows", backfill.target, backfill.source,
        len(months),
    )  # fmt: skip
    started = time.perf_counter()
    for done, month in enumerate(months, start=1):
        if backfill.clear is not None:
            client.command(
                backfill.clear, parameters={"month": month}, settings={"mutations_sync": 2}
            )
        client.command(backfill.insert, parameters={"month": month})
        merge = backfill.merge(month)
        if merge is not None:
            client.command(merge)
        log.info(
            "backfilled %s for %d (%d/%d months, %.1f s)", backfill.target, month, done,
            len(months), time.perf_counter() - started,
        )  # fmt: skip
    log.info("backfill of %s (view %s) done", backfill.target, view)


def apply_migrations(url: str) -> list[int]:
    """Brings the analytics store at ``url`` to the newest schema; returns the versions applied."""
    client = connect(url)
    topology = topology_for(url)
    migrations = load_migrations()
    _apply(client, migrations[BOOTSTRAP_VERSION], topology)
    applied = applied_migrations(client)
    newly_applied: list[int] = []
    for migration in migrations:
        if migration.version == BOOTSTRAP_VERSION:
            continue
        stored = applied.get(migration.version)
        if stored is not None:
            if stored != migration.checksum:
                raise MigrationError(
                    f"ClickHouse migration {migration.version:04d}_{migration.name} was changed "
                    "after it was applied; add a new numbered file instead"
                )
            continue
        _apply(client, migration, topology)
        client.insert(
            "schema_migrations",
            [(migration.version, migration.name, migration.checksum)],
            column_names=["version", "name", "checksum"],
        )
        newly_applied.append(migration.version)
        log.info("applied clickhouse migration %04d_%s", migration.version, migration.name)
    return newly_applied
