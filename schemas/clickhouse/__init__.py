"""ClickHouse DDL: numbered SQL files, rendered for one node or for a cluster.

Each ``NNNN_name.sql`` file is one migration holding one or more statements. Every statement
is preceded by two header comments::

    -- object: access_events
    -- placement: sharded by cityHash64(feed_id)      (or: everywhere, or: view)

and uses placeholders instead of the parts that differ between the two ways of running:

``{{name}}``
    an object of the schema (this file's or another's);
``{{on_cluster}}``
    nothing on one node, ``ON CLUSTER 'c'`` on a cluster;
``{{engine: ReplacingMergeTree(version)}}``
    the table engine; on a cluster it becomes its ``Replicated...`` twin.

One node (chdb embedded, or a single ClickHouse server) gets the statement with the names
as written. A cluster gets, for a ``sharded`` table, ``<name>_local`` with the replicated
engine plus a ``Distributed`` table called ``<name>`` over it, so queries use the same names
in both variants. ``everywhere`` tables are replicated to every node without sharding;
views are created on every node, reading and writing the local tables.

A view added to a store that already holds rows can carry a third header::

    -- backfill: by month of bucket

The migration then fills its table from the rows its source already held, one month of that
column at a time (:func:`backfill_statements`). A table idempotent under a second copy of a
row (a set union, a latest-version table) needs nothing more: rows inserted while the backfill
runs reach the table through the view and through the backfill alike. A table of sums names
its own bucket column instead::

    -- backfill: by month of time, rebuilding bucket

and each month's buckets are deleted before the month is inserted (and merged into one part
after), so a backfill interrupted and run again rebuilds the months it had done instead of
adding them twice. The table must be partitioned by the month of that column. It is exact when
nothing is inserted meanwhile: the stream worker, the only writer, migrates before it consumes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).parent
BOOTSTRAP_VERSION = 0
LOCAL_SUFFIX = "_local"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_OBJECT_HEADER = re.compile(r"^--\s*object:\s*(?P<name>[a-z][a-z0-9_]*)\s*$", re.MULTILINE)
_PLACEMENT_HEADER = re.compile(r"^--\s*placement:\s*(?P<placement>.+?)\s*$", re.MULTILINE)
_SHARDED = re.compile(r"^sharded by (?P<key>.+)$")
_PLACEHOLDER = re.compile(r"\{\{\s*(?P<body>[^{}]+?)\s*\}\}")
_ENGINE = re.compile(r"^engine:\s*(?P<engine>[A-Za-z]*MergeTree)\s*(?:\((?P<args>.*)\))?$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_BACKFILL_HEADER = re.compile(
    r"^--\s*backfill:\s*by month of (?P<column>[a-z][a-z0-9_]*)"
    r"(?:,\s*rebuilding (?P<rebuilt>[a-z][a-z0-9_]*))?\s*$",
    re.MULTILINE,
)
_VIEW_QUERY = re.compile(
    r"TO (?P<target>\w+)\s+AS (?P<select>SELECT\b.*\bFROM (?P<source>\w+)\b.*)$", re.DOTALL
)


class SchemaError(ValueError):
    """A DDL file does not follow the conventions above."""


class Placement(StrEnum):
    sharded = "sharded"
    everywhere = "everywhere"
    view = "view"


@dataclass(frozen=True)
class SchemaObject:
    name: str
    placement: Placement
    sharding_key: str | None
    template: str
    backfill_column: str | None = None
    # The target's bucket column whose months a backfill deletes before inserting them.
    rebuilt_column: str | None = None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    checksum: str
    objects: tuple[SchemaObject, ...]


@dataclass(frozen=True)
class Topology:
    """Where the DDL goes: ``cluster=None`` is one node (chdb or a single server)."""

    cluster: str | None = None

    def __post_init__(self) -> None:
        if self.cluster is not None and not _CLUSTER_NAME.match(self.cluster):
            raise SchemaError(f"cluster name {self.cluster!r} must match {_CLUSTER_NAME.pattern}")


SINGLE_NODE = Topology()


def _parse_statement(text: str, source: str) -> SchemaObject:
    name_match = _OBJECT_HEADER.search(text)
    placement_match = _PLACEMENT_HEADER.search(text)
    if name_match is None or placement_match is None:
        raise SchemaError(
            f"{source}: each statement needs '-- object:' and '-- placement:' headers"
        )
    placement_text = placement_match["placement"]
    sharded = _SHARDED.match(placement_text)
    if sharded:
        placement, key = Placement.sharded, sharded["key"]
    elif placement_text in (Placement.everywhere, Placement.view):
        placement, key = Placement(placement_text), None
    else:
        raise SchemaError(f"{source}: unknown placement {placement_text!r}")
    backfill = _BACKFILL_HEADER.search(text)
    if backfill is not None and placement is not Placement.view:
        raise SchemaError(f"{source}: only a view can be backfilled")
    return SchemaObject(
        name_match["name"],
        placement,
        key,
        text.strip(),
        backfill["column"] if backfill is not None else None,
        backfill["rebuilt"] if backfill is not None else None,
    )


def _split_statements(text: str) -> list[str]:
    return [part for part in re.split(r";\s*(?:\n|$)", text) if part.strip()]


@cache
def load_migrations() -> tuple[Migration, ...]:
    """Every migration in version order, starting with the bootstrap (schema_migrations)."""
    migrations = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise SchemaError(f"{path.name}: migration files are named NNNN_name.sql")
        text = path.read_text(encoding="utf-8")
        objects = tuple(_parse_statement(part, path.name) for part in _split_statements(text))
        migrations.append(
            Migration(
                version=int(match["version"]),
                name=match["name"],
                checksum=hashlib.sha256(text.encode()).hexdigest(),
                objects=objects,
            )
        )
    versions = [migration.version for migration in migrations]
    if versions != list(range(len(versions))):
        raise SchemaError(f"migration versions must be 0, 1, 2, ... without gaps: {versions}")
    return tuple(migrations)


@cache
def schema_objects() -> dict[str, SchemaObject]:
    objects: dict[str, SchemaObject] = {}
    for migration in load_migrations():
        for item in migration.objects:
            if item.name in objects:
                raise SchemaError(f"object {item.name!r} is defined twice")
            objects[item.name] = item
    return objects


def physical_name(name: str, topology: Topology) -> str:
    """The name a statement must use for ``name`` on this topology (local table or not)."""
    item = schema_objects().get(name)
    if item is None:
        raise SchemaError(f"unknown schema object {name!r}")
    if topology.cluster is not None and item.placement is Placement.sharded:
        return name + LOCAL_SUFFIX
    return name


def _replicated_engine(engine: str, args: str | None, zookeeper_path: str) -> str:
    arguments = [f"'{zookeeper_path}'", "'{replica}'"]
    if args and args.strip():
        arguments.append(args.strip())
    return f"Replicated{engine}({', '.join(arguments)})"


def _render_placeholder(body: str, item: SchemaObject, topology: Topology) -> str:
    if body == "on_cluster":
        return f"ON CLUSTER '{topology.cluster}'" if topology.cluster else ""
    engine = _ENGINE.match(body)
    if engine is not None:
        if topology.cluster is None:
            args = engine["args"]
            return f"{engine['engine']}({args})" if args is not None else engine["engine"]
        if item.placement is Placement.view:
            raise SchemaError(f"view {item.name!r} cannot have an engine")
        shard = "{shard}" if item.placement is Placement.sharded else "all"
        path = f"/clickhouse/tables/{shard}/{{database}}/{physical_name(item.name, topology)}"
        return _replicated_engine(engine["engine"], engine["args"], path)
    if re.fullmatch(r"[a-z][a-z0-9_]*", body):
        return physical_name(body, topology)
    raise SchemaError(f"{item.name}: unknown placeholder {{{{{body}}}}}")


def _strip_comments(sql: str) -> str:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def render_object(item: SchemaObject, topology: Topology) -> list[str]:
    """The statements creating ``item`` on ``topology`` (two for a sharded cluster table)."""
    sql = _PLACEHOLDER.sub(
        lambda match: _render_placeholder(match["body"], item, topology), item.template
    )
    statements = [re.sub(r"[ \t]+\n", "\n", _strip_comments(sql))]
    if topology.cluster is not None and item.placement is Placement.sharded:
        local = physical_name(item.name, topology)
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {item.name} ON CLUSTER '{topology.cluster}' AS {local}\n"
            f"ENGINE = Distributed('{topology.cluster}', currentDatabase(), '{local}', "
            f"{item.sharding_key})"
        )
    return statements


def render_migration(migration: Migration, topology: Topology) -> list[str]:
    return [sql for item in migration.objects for sql in render_object(item, topology)]


def render_schema(topology: Topology) -> list[str]:
    """The whole schema as statements, in migration order (for review or a manual apply)."""
    return [sql for migration in load_migrations() for sql in render_migration(migration, topology)]


@dataclass(frozen=True)
class Backfill:
    """How to fill a new view's table from the rows its source held before the view existed."""

    target: str
    source: str
    months: str
    insert: str
    # Deletes one month of the target's rows first (tables of sums), or None.
    clear: str | None = None
    # The target's local table (and ON CLUSTER clause) whose month is merged after it is
    # rebuilt, or None.
    rebuilt_table: str | None = None

    def merge(self, month: int) -> str | None:
        """Merges a rebuilt month into one part (the insert writes several): a table ordered
        by feed then reads one run of granules per feed, not one per part."""
        if self.rebuilt_table is None:
            return None
        return f"OPTIMIZE TABLE {self.rebuilt_table} PARTITION ID '{month:d}' FINAL"


def backfill_statements(item: SchemaObject, topology: Topology = SINGLE_NODE) -> Backfill | None:
    """The view's own query over one month of its source (bound as ``{month:UInt32}``), so a
    backfilled row is exactly what the view would have written. Logical names are used: on a
    cluster they are the Distributed tables, so one run covers every shard; a month's rows are
    deleted from the local tables of every node."""
    if item.backfill_column is None:
        return None
    statement = render_object(item, SINGLE_NODE)[0]
    match = _VIEW_QUERY.search(statement)
    if match is None:
        raise SchemaError(f"{item.name}: a backfilled view needs 'TO table AS SELECT ... FROM'")
    source, column = match["source"], item.backfill_column
    month = f"toYYYYMM({column})"
    one_month = f"FROM (SELECT * FROM {source} WHERE {month} = {{month:UInt32}}) AS {source}"
    clear = rebuilt_table = None
    if item.rebuilt_column is not None:
        on_cluster = f" ON CLUSTER '{topology.cluster}'" if topology.cluster else ""
        rebuilt_table = physical_name(match["target"], topology) + on_cluster
        clear = (
            f"ALTER TABLE {rebuilt_table} DELETE "
            f"WHERE toYYYYMM({item.rebuilt_column}) = {{month:UInt32}}"
        )
    return Backfill(
        target=match["target"],
        source=source,
        months=f"SELECT DISTINCT {month} AS month FROM {source} ORDER BY month",
        insert=f"INSERT INTO {match['target']} "
        + match["select"].replace(f"FROM {source}", one_month, 1),
        clear=clear,
        rebuilt_table=rebuilt_table,
    )
