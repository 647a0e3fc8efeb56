"""The knowledge_graph asset: the KG snapshots the models of a day read, built only from events up
to their own day."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster.defs.dataset import daily_partitions, partition_date
from unirec_dagster.defs.ingest import raw_events, raw_items, raw_users
from unirec_dagster.defs.presentation import counts_table
from unirec_dagster.defs.resources import OWNERS, WAREHOUSE_POOL, DatasetResource, warehouse_table
from unirec_dagster.graph import KGParams, build_partition
from unirec_dagster.graph.checks import check_snapshot, relations_out_of_bounds
from unirec_dagster.warehouse import rows


class KnowledgeGraphConfig(KGParams, dg.Config):
    """Run config of knowledge_graph: the KGParams fields."""


@dg.asset(
    group_name="graph", owners=OWNERS, metadata=warehouse_table("kg.triples"),
    kinds={"duckdb"},
    partitions_def=daily_partitions,
    deps=[raw_events, raw_items, raw_users],
    pool=WAREHOUSE_POOL,
    code_version="2",
    check_specs=[
        dg.AssetCheckSpec("no_dangling_ids", asset="knowledge_graph", blocking=True,
                          description="Every triple's head and tail is an entity; no natural key has two ids."),
        dg.AssetCheckSpec("items_have_entities", asset="knowledge_graph", blocking=True,
                          description="Every item with events before the cut has an entity."),
    ],
    description="kg.entities, kg.relations and two kg.triples snapshots: as of the end of the partition day "
                "(serving, final training) and as of validation_days before it (validation fit, pretraining).",
)
def knowledge_graph(context: dg.AssetExecutionContext, config: KnowledgeGraphConfig, duckdb: DuckDBResource,
                    dataset: DatasetResource):
    day = partition_date(context)
    params = KGParams(**config.model_dump())
    with duckdb.get_connection() as conn:
        served, validation = build_partition(conn, dataset.load(), day, params, run_id=context.run_id)
        integrity = check_snapshot(conn, day)
    context.log.info(f"KG {day}: {sum(served.entities_by_type.values()):,} entities ({served.new_entities:,} new), "
                     f"{served.triples:,} triples in {served.seconds:.1f}s; validation snapshot "
                     f"{validation.snapshot_date}: {validation.triples:,} triples")
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": served.triples,
        "snapshot_date": day.isoformat(),
        "validation_snapshot_date": validation.snapshot_date.isoformat(),
        "entities": sum(served.entities_by_type.values()),
        "new_entities": served.new_entities,
        "triples": served.triples,
        "validation_triples": validation.triples,
        "seconds": served.seconds + validation.seconds,
        "entities_by_type": counts_table(("entity type", "entities"), served.entities_by_type),
        "triples_by_relation": counts_table(("relation", "triples"), served.triples_by_relation),
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


class RelationBoundsConfig(dg.Config):
    """Run config of the relation_sizes check."""

    min_relation_triples: int = KGParams().min_relation_triples
    max_relation_triples: int = KGParams().max_relation_triples


# Reads the warehouse only: re-run it from the asset page without rebuilding the graph. It checks
# the newest snapshot (Dagster's partitioned asset checks are still a preview).
@dg.asset_check(asset=knowledge_graph, pool=WAREHOUSE_POOL,
                description="Each relation's triple count in the newest KG snapshot is within the configured "
                            "bounds; warns otherwise.")
def relation_sizes(config: RelationBoundsConfig, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    params = KGParams(min_relation_triples=config.min_relation_triples, max_relation_triples=config.max_relation_triples)
    with duckdb.get_connection() as conn:
        newest = rows(conn, "SELECT max(snapshot_date) FROM kg.triples")[0][0]
        out_of_bounds = relations_out_of_bounds(conn, newest, params) if newest else {}
    return dg.AssetCheckResult(
        passed=newest is not None and not out_of_bounds, severity=dg.AssetCheckSeverity.WARN,
        metadata={"snapshot_date": str(newest), "out_of_bounds": out_of_bounds,
                  "bounds": [params.min_relation_triples, params.max_relation_triples]})
