"""What the business reads: serving.recommendations (one partition per run date) and
serving.similar_items, from the newest promoted model that knows nothing after that date."""

import datetime as dt

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster import settings
from unirec_dagster.defs.dataset import SPEC, daily_partitions
from unirec_dagster.defs.ingest import raw_events
from unirec_dagster.defs.resources import WAREHOUSE_POOL
from unirec_dagster.defs.training import finetuned_recommender, model_evaluation
from unirec_dagster.serving.recommend import similar_item_vectors, write_recommendations, write_similar_items
from unirec_dagster.training.context import graph_as_of, served_scorer, text_view
from unirec_dagster.training.steps import promoted_checkpoint
from unirec_dagster.warehouse import rows


class RecommendationConfig(dg.Config):
    k: int = 50
    lookback_days: int = 90        # users active in this window get recommendations
    min_history: int = 1           # fewer purchases than this: recently popular in the user's segment
    exclude_purchased: bool = True


@dg.asset(group_name="serving", kinds={"duckdb"}, partitions_def=daily_partitions,
          deps=[finetuned_recommender, model_evaluation, raw_events], pool=WAREHOUSE_POOL, code_version="2",
          check_specs=[dg.AssetCheckSpec("coverage", asset="recommendations",
                                         description="Every active user got K recommendations.")],
          description="Top K items per active user for the night after the partition date (data up to its end).")
def recommendations(context: dg.AssetExecutionContext, config: RecommendationConfig, duckdb: DuckDBResource):
    run_date = dt.date.fromisoformat(context.partition_key)
    checkpoint = promoted_checkpoint(settings.models_dir(), run_date)
    with duckdb.get_connection() as conn:
        scorer = served_scorer(conn, SPEC, checkpoint, run_date)
        stats = write_recommendations(conn, SPEC, run_date, scorer, checkpoint.version, context.run.run_id, config.k,
                                      config.lookback_days, config.min_history, config.exclude_purchased)
        short = rows(conn, """SELECT count(*) FROM (SELECT user_id FROM serving.recommendations
                              WHERE partition_date = $d GROUP BY 1 HAVING count(*) < $k)""",
                     {"d": run_date, "k": config.k})[0][0]
    context.log.info(f"{stats.users:,} users ({stats.fallback_users:,} fallback), {stats.rows:,} rows, "
                     f"{stats.users_per_second:,.0f} users/s")
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": stats.rows, "users": stats.users, "model_users": stats.model_users,
        "fallback_users": stats.fallback_users, "users_per_second": stats.users_per_second,
        "model_version": checkpoint.version, "kg_snapshot": checkpoint.manifest["kg_snapshot"],
        "pretrained_parent": checkpoint.manifest["parent"],
        "raw_partitions": f"{SPEC.events.start_date}..{run_date}", "blend": checkpoint.manifest["blend"]})
    yield dg.AssetCheckResult(check_name="coverage", passed=short == 0,
                              severity=dg.AssetCheckSeverity.WARN, metadata={"users_short_of_k": short})


@dg.asset(group_name="serving", kinds={"duckdb"}, partitions_def=daily_partitions, deps=[finetuned_recommender],
          pool=WAREHOUSE_POOL, code_version="2",
          description="serving.similar_items: cosine neighbours in the model's space; items without interactions "
                      "are placed through their aligned text view.")
def similar_items(context: dg.AssetExecutionContext, duckdb: DuckDBResource):
    run_date = dt.date.fromisoformat(context.partition_key)
    checkpoint = promoted_checkpoint(settings.models_dir(), run_date)
    with duckdb.get_connection() as conn:
        graph = graph_as_of(conn, SPEC, run_date)
        model = checkpoint.build_model(graph.num_entities, len(graph.relation_names))
        items, vectors = similar_item_vectors(model, graph, text_view(conn))
        written = write_similar_items(conn, SPEC, run_date, items, vectors, checkpoint.version)
    return dg.MaterializeResult(metadata={"dagster/row_count": written, "items": len(items),
                                          "model_version": checkpoint.version})
