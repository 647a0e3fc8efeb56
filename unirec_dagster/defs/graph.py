"""The knowledge_graph asset: one KG snapshot per day, built only from events up to that day."""

import datetime as dt

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster.defs.dataset import SPEC, daily_partitions
from unirec_dagster.defs.ingest import raw_events, raw_items, raw_users
from unirec_dagster.defs.resources import WAREHOUSE_POOL
from unirec_dagster.graph import KGParams, build_snapshot
from unirec_dagster.graph.checks import check_snapshot


class KnowledgeGraphConfig(KGParams, dg.Config):
    """Run config of knowledge_graph: the KGParams fields."""


def _table(header: tuple[str, str], counts: dict[str, int]) -> dg.MetadataValue:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {k} | {v:,} |" for k, v in counts.items())]
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(
    group_name="graph",
    kinds={"duckdb"},
    partitions_def=daily_partitions,
    deps=[raw_events, raw_items, raw_users],
    pool=WAREHOUSE_POOL,
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec("no_dangling_ids", asset="knowledge_graph", blocking=True,
                          description="Every triple's head and tail is an entity; no natural key has two ids."),
        dg.AssetCheckSpec("items_have_entities", asset="knowledge_graph", blocking=True,
                          description="Every item with events before the cut has an entity."),
        dg.AssetCheckSpec("relation_sizes", asset="knowledge_graph",
                          description="Each relation's triple count is within the configured bounds."),
    ],
    description="kg.entities, kg.relations and the kg.triples snapshot of the partition date (events up to its end).",
)
def knowledge_graph(context: dg.AssetExecutionContext, config: KnowledgeGraphConfig, duckdb: DuckDBResource):
    snapshot_date = dt.date.fromisoformat(context.partition_key)
    params = KGParams(**config.model_dump())
    with duckdb.get_connection() as conn:
        stats = build_snapshot(conn, SPEC, snapshot_date, params, run_id=context.run.run_id)
        integrity = check_snapshot(conn, snapshot_date, params)
    context.log.info(f"KG {snapshot_date}: {sum(stats.entities_by_type.values()):,} entities"
                     f" ({stats.new_entities:,} new), {stats.triples:,} triples in {stats.seconds:.1f}s")
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": stats.triples,
        "snapshot_date": snapshot_date.isoformat(),
        "entities": sum(stats.entities_by_type.values()),
        "new_entities": stats.new_entities,
        "triples": stats.triples,
        "seconds": stats.seconds,
        "entities_by_type": _table(("entity type", "entities"), stats.entities_by_type),
        "triples_by_relation": _table(("relation", "triples"), stats.triples_by_relation),
    })
    yield dg.AssetCheckResult(
        check_name="no_dangling_ids",
        passed=integrity.dangling_triples == 0 and integrity.duplicate_entity_keys == 0,
        metadata={"dangling_triples": integrity.dangling_triples,
                  "duplicate_entity_keys": integrity.duplicate_entity_keys},
    )
    yield dg.AssetCheckResult(
        check_name="items_have_entities",
        passed=integrity.items_without_entity == 0,
        metadata={"items_without_entity": integrity.items_without_entity},
    )
    yield dg.AssetCheckResult(
        check_name="relation_sizes",
        passed=not integrity.relations_out_of_bounds,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"out_of_bounds": integrity.relations_out_of_bounds,
                  "bounds": [params.min_relation_triples, params.max_relation_triples]},
    )
