"""What the business reads: serving.recommendations and serving.similar_items, one partition per
run date, from that partition's fine-tuned model (an older one only when named in the run config)."""

import datetime as dt
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from unirec_dagster import settings as app_settings
from unirec_dagster.defs.dataset import daily_partitions, partition_date
from unirec_dagster.defs.graph import knowledge_graph
from unirec_dagster.defs.ingest import raw_events
from unirec_dagster.defs.presentation import markdown_table
from unirec_dagster.defs.resources import (
    OWNERS,
    WAREHOUSE_POOL,
    DatasetResource,
    ModelStoreResource,
    served_by_morning,
    warehouse_table,
)
from unirec_dagster.defs.training import finetuned_recommender
from unirec_dagster.features import checkpoint_text_view
from unirec_dagster.serving.policy import served_checkpoint, served_policy
from unirec_dagster.serving.recommend import (
    ServingSettings,
    preview,
    publish_recommendations,
    publish_similar_items,
    refresh_similar_items,
    users_short_of_k,
    write_recommendations,
)
from unirec_dagster.warehouse import rows


class RecommendationConfig(ServingSettings, dg.Config):
    """Run config of recommendations: the ServingSettings fields, and an explicit older model."""

    model_partition: str | None = Field(None, description="Serve the fine-tuned model of this earlier partition "
                                        "(YYYY-MM-DD) instead of the day's own; the model_age check then warns.")


def model_age_check(asset: str, run_date, checkpoint) -> dg.AssetCheckResult:
    """Passes when the day's own model served; warns, naming it, when an older one was chosen on purpose."""
    own = checkpoint.partition == run_date
    return dg.AssetCheckResult(
        check_name="model_age", asset_key=asset, passed=own, severity=dg.AssetCheckSeverity.WARN,
        description="the partition's own model" if own else
        f"served {checkpoint.version}, the model of {checkpoint.partition}, {(run_date - checkpoint.partition).days} "
        "days older than the partition (model_partition in the run config)",
        metadata={"model_version": checkpoint.version, "model_partition": checkpoint.partition.isoformat()})


def _model_partition(value: str | None):
    return dt.date.fromisoformat(value) if value else None


@dg.asset(group_name="serving", owners=OWNERS, kinds={"duckdb"},
          metadata=warehouse_table("serving.recommendations"), partitions_def=daily_partitions,
          freshness_policy=served_by_morning(),
          deps=[finetuned_recommender, knowledge_graph, raw_events], pool=WAREHOUSE_POOL, code_version="3",
          check_specs=[dg.AssetCheckSpec("model_age", asset="recommendations",
                                         description="The partition's own fine-tuned model served (warns when "
                                                     "an older one was chosen with model_partition).")],
          description="Top K items for every user with history, for the night after the partition date "
                      "(data up to its end), ranked by the policy of the newest fine-tuned model up to that date: "
                      "the two-stage ranker, or the strongest simple baseline when the gate chose it.")
def recommendations(context: dg.AssetExecutionContext, config: RecommendationConfig, duckdb: DuckDBResource,
                    dataset: DatasetResource, model_store: ModelStoreResource):
    spec, run_date = dataset.load(), partition_date(context)
    settings = ServingSettings(**config.model_dump(exclude={"model_partition"}))
    with duckdb.get_connection() as conn:
        checkpoint = served_checkpoint(model_store.for_warehouse(conn, spec), run_date,
                                       _model_partition(config.model_partition))
        served = served_policy(conn, spec, checkpoint, run_date)
        stats = write_recommendations(conn, spec, run_date, served.ranking, checkpoint.version, context.run_id,
                                      settings, served.graph)
        sample = preview(conn, run_date)
        published = publish_recommendations(conn, run_date, Path(duckdb.database))
    context.log.info(f"{stats.users:,} users ({stats.fallback_users:,} fallback), {stats.rows:,} rows, "
                     f"{stats.users_per_second:,.0f} users/s, {settings.shards} shard(s)")
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": stats.rows, "users": stats.users, "model_users": stats.model_users,
        "fallback_users": stats.fallback_users, "users_per_second": stats.users_per_second, "shards": settings.shards,
        "model_version": checkpoint.version, "kg_snapshot": checkpoint.manifest["kg_snapshot"],
        "pretrained_parent": checkpoint.manifest["parent"] or "", "policy": served.name,
        "published": dg.MetadataValue.path(str(published)),
        **({"api": dg.MetadataValue.url(f"{api.rstrip('/')}/health")} if (api := app_settings.api_url()) else {}),
        "preview": markdown_table(["user", "rank", "item", "title", "reason"], sample)})
    yield model_age_check("recommendations", run_date, checkpoint)



# Reads the warehouse only: re-run it from the asset page without re-serving. It checks the newest
# night (Dagster's partitioned asset checks are still a preview).
@dg.asset_check(asset=recommendations, pool=WAREHOUSE_POOL,
                description="Every user of the newest night got as many recommendations as its longest list (K); "
                            "warns when some got fewer (a catalog smaller than K once their purchases are left out).")
def coverage(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as conn:
        night = rows(conn, "SELECT max(partition_date) FROM serving.recommendations")[0][0]
        k = rows(conn, "SELECT coalesce(max(rank), 0) FROM serving.recommendations WHERE partition_date = $d",
                 {"d": night})[0][0] if night else 0
        short = users_short_of_k(conn, night, k) if night else 0
    return dg.AssetCheckResult(passed=k > 0 and short == 0, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"night": str(night), "k": k, "users_short_of_k": short},
                               description=f"{night}: {short:,} user(s) got fewer than {k}" if k else "no night served")

@dg.asset(group_name="serving", owners=OWNERS, kinds={"duckdb"},
          metadata=warehouse_table("serving.similar_items"), partitions_def=daily_partitions,
          freshness_policy=served_by_morning(),
          deps=[finetuned_recommender, knowledge_graph], pool=WAREHOUSE_POOL, code_version="3",
          description="serving.similar_items (one partition per run date; serving.latest_similar_items reads the "
                      "newest): cosine neighbours in the model's space; items without interactions are placed "
                      "through their aligned text view.")
def similar_items(context: dg.AssetExecutionContext, duckdb: DuckDBResource, dataset: DatasetResource,
                  model_store: ModelStoreResource):
    spec, run_date = dataset.load(), partition_date(context)
    with duckdb.get_connection() as conn:
        checkpoint = served_checkpoint(model_store.for_warehouse(conn, spec), run_date)
        written, items = refresh_similar_items(conn, spec, run_date, checkpoint, checkpoint_text_view(conn, checkpoint))
        published = publish_similar_items(conn, run_date, Path(duckdb.database))
    return dg.MaterializeResult(metadata={"dagster/row_count": written, "items": items,
                                          "model_version": checkpoint.version,
                                          "published": dg.MetadataValue.path(str(published))})
