"""The ClickHouse DDL: one definition per table, rendered for one node and for a cluster.

The cluster variant must be the single-node statement with only the placement changed
(ON CLUSTER, the Replicated engine, the _local name) plus a Distributed table; both variants
must parse in the real ClickHouse parser (chdb's formatQuery), the single-node one must apply,
and the rows the agents build must match the tables' columns.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.clickhouse import connect, disconnect
from infra.clickhouse_migrations import MigrationError, apply_migrations
from schemas.clickhouse import (
    LOCAL_SUFFIX,
    SINGLE_NODE,
    Placement,
    Topology,
    backfill_statements,
    load_migrations,
    render_migration,
    render_object,
    render_schema,
    schema_objects,
)
from streams.access import ACCESS_COLUMNS, access_row, decision_row
from streams.catalog import FeedFacts
from streams.columns import to_arrow
from streams.decoding import AccessCloudEvent

CLUSTER = Topology(cluster="feedgrid")


@pytest.fixture
def analytics_url(tmp_path: Path) -> Iterator[str]:
    url = f"chdb://{tmp_path / 'analytics'}"
    yield url
    disconnect(url)


def _formatted(url: str, statement: str) -> str:
    return str(
        connect(url)
        .query("SELECT formatQuery({sql:String})", parameters={"sql": statement})
        .result_rows[0][0]
    )


def _as_single_node(statement: str) -> str:
    """Undo exactly what the cluster rendering may change."""
    statement = statement.replace(" ON CLUSTER feedgrid", "")
    statement = re.sub(
        r"Replicated(\w*MergeTree)\('/clickhouse/tables/[^']+', '\{replica\}'(?:, )?(.*?)\)",
        lambda match: f"{match[1]}({match[2]})" if match[2] else match[1],
        statement,
    )
    return re.sub(rf"\b(\w+){LOCAL_SUFFIX}\b", r"\1", statement)


def test_migrations_are_numbered_without_gaps_and_every_table_is_there() -> None:
    migrations = load_migrations()
    assert [migration.version for migration in migrations] == list(range(len(migrations)))
    names = set(schema_objects())
    assert {
        "schema_migrations",
        "access_events",
        "feed_metadata",
        "decisions",
        "alerts",
        "feed_status",
        "usage_departments_minute",
        "usage_departments_hour",
        "usage_feeds_minute",
        "usage_feeds_hour",
    } <= names
    views = {name for name, item in schema_objects().items() if item.placement is Placement.view}
    rollups = {
        f"usage_{family}_{grain}"
        for family in ("departments", "feeds")
        for grain in ("minute", "hour")
    }
    rollups |= {
        "usage_departments_day",
        "usage_feeds_day",
        "feed_activity_day",
        "feed_retrieval_span",
        "usage_scopes_day",
        "usage_feeds_hour_by_feed",
        "escalations",
    }
    assert rollups <= names
    assert views == {f"{rollup}_mv" for rollup in rollups}


def test_cluster_variant_is_the_same_definition_with_only_placement_changed(
    analytics_url: str,
) -> None:
    for item in schema_objects().values():
        single = render_object(item, SINGLE_NODE)
        cluster = render_object(item, CLUSTER)
        assert len(single) == 1
        single_formatted = _formatted(analytics_url, single[0])
        local_formatted = _formatted(analytics_url, cluster[0])
        assert "ON CLUSTER feedgrid" in local_formatted
        assert _as_single_node(local_formatted) == single_formatted, item.name
        if item.placement is Placement.sharded:
            assert f"{item.name}{LOCAL_SUFFIX} ON CLUSTER" in local_formatted
            assert "Replicated" in local_formatted and "{shard}" in local_formatted
            distributed = _formatted(analytics_url, cluster[1])
            assert (
                f"Distributed('feedgrid', currentDatabase(), '{item.name}{LOCAL_SUFFIX}'"
                in distributed
            )
            assert item.sharding_key is not None and item.sharding_key in distributed
        elif item.placement is Placement.everywhere:
            assert len(cluster) == 1 and "/clickhouse/tables/all/" in local_formatted
        else:
            assert len(cluster) == 1 and "Replicated" not in local_formatted


def test_views_read_and_write_local_tables_on_a_cluster() -> None:
    view = render_object(schema_objects()["usage_feeds_hour_mv"], CLUSTER)[0]
    assert f"TO usage_feeds_hour{LOCAL_SUFFIX}" in view
    assert f"FROM access_events{LOCAL_SUFFIX}" in view
    assert len(render_schema(CLUSTER)) == len(render_schema(SINGLE_NODE)) + sum(
        1 for item in schema_objects().values() if item.placement is Placement.sharded
    )


def test_migrations_apply_once_and_again_do_nothing(analytics_url: str) -> None:
    applied = apply_migrations(analytics_url)
    assert applied == [migration.version for migration in load_migrations()[1:]]
    assert apply_migrations(analytics_url) == []
    tables = {row[0] for row in connect(analytics_url).query("SHOW TABLES").result_rows}
    assert set(schema_objects()) <= tables


def test_an_applied_migration_edited_later_is_refused(analytics_url: str) -> None:
    apply_migrations(analytics_url)
    connect(analytics_url).command(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
        "VALUES (1, 'access_events', 'edited', now64(3) + 1)"
    )
    with pytest.raises(MigrationError, match="0001_access_events"):
        apply_migrations(analytics_url)


def _columns(url: str, table: str) -> set[str]:
    rows = connect(url).query(f"DESCRIBE TABLE {table}").result_rows
    return {row[0] for row in rows if row[0] != "ingested_at"}


def test_rows_built_by_the_agents_match_the_tables(analytics_url: str) -> None:
    apply_migrations(analytics_url)
    event = AccessCloudEvent.model_validate(
        {
            "id": str(uuid.uuid4()),
            "type": "feedgrid.access.decided",
            "time": datetime.now(UTC).isoformat(),
            "data": {"feed_id": "f", "request_id": "r", "decision": "granted"},
        }
    )
    # the sink adds the block it inserts the row in
    row = access_row(event, FeedFacts(0, "", "", "", "", ""), 0, 0, 0)
    assert len(row) == len(ACCESS_COLUMNS)
    assert set(ACCESS_COLUMNS) | {"sink_block"} == _columns(analytics_url, "access_events")
    # the batch path's Arrow block has every column, in a type the table takes
    block = to_arrow({name: [value] for name, value in zip(ACCESS_COLUMNS, row, strict=True)})
    connect(analytics_url).insert_arrow("access_events", block)
    decision = decision_row(event, "lz-psb")
    assert decision is not None and set(decision) == _columns(analytics_url, "decisions")


def test_every_statement_of_both_variants_parses(analytics_url: str) -> None:
    for migration in load_migrations():
        for statement in [
            *render_migration(migration, SINGLE_NODE),
            *render_migration(migration, CLUSTER),
        ]:
            assert _formatted(analytics_url, statement).startswith("CREATE")


def test_a_backfilled_view_fills_its_table_with_its_own_query_a_month_at_a_time() -> None:
    view = schema_objects()["feed_retrieval_span_mv"]
    backfill = backfill_statements(view)
    assert backfill is not None
    assert (backfill.target, backfill.source) == ("feed_retrieval_span", "usage_feeds_hour")
    assert "toYYYYMM(bucket) = {month:UInt32}" in backfill.insert
    defined = render_object(view, SINGLE_NODE)[0].split("AS SELECT", 1)[1]
    assert defined.split("FROM")[0] in backfill.insert  # the view's own columns
    # min and max take a row twice: nothing to delete first
    assert backfill.clear is None and backfill.merge(202611) is None
    # A table of sums is backfilled only with its months rebuilt (deleted, then inserted).
    backfilled = {name for name, item in schema_objects().items() if item.backfill_column}
    assert backfilled == {
        "feed_retrieval_span_mv",
        "usage_scopes_day_mv",
        "usage_feeds_hour_by_feed_mv",
        "escalations_mv",
    }
    # distinct pairs: a row taken twice counts once, nothing to delete first
    escalations = backfill_statements(schema_objects()["escalations_mv"])
    assert escalations is not None and escalations.clear is None
    for name in backfilled - {"feed_retrieval_span_mv", "escalations_mv"}:
        summed = backfill_statements(schema_objects()[name])
        assert summed is not None and summed.source == "access_events"
        assert summed.clear == (
            f"ALTER TABLE {summed.target} DELETE WHERE toYYYYMM(bucket) = {{month:UInt32}}"
        )
        assert summed.merge(202611) == (
            f"OPTIMIZE TABLE {summed.target} PARTITION ID '202611' FINAL"
        )
        on_cluster = backfill_statements(schema_objects()[name], CLUSTER)
        assert on_cluster is not None and on_cluster.clear is not None
        assert on_cluster.clear.startswith(f"ALTER TABLE {summed.target}_local ON CLUSTER ")
        assert str(on_cluster.merge(202611)).startswith(
            f"OPTIMIZE TABLE {summed.target}_local ON CLUSTER 'feedgrid' PARTITION ID"
        )
