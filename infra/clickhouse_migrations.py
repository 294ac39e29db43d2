"""`feedgrid migrate` for ClickHouse: applies the numbered DDL files once each, in order.

Applied versions and the checksum of their file are kept in ``schema_migrations``. Every
statement is ``IF NOT EXISTS``, so a migration interrupted half-way is simply applied again.
A file edited after it was applied is refused: a schema change is a new numbered file.
"""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from infra.clickhouse import cluster_name, connect
from schemas.clickhouse import (
    BOOTSTRAP_VERSION,
    Migration,
    Topology,
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
