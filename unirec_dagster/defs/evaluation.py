"""model_evaluation: the served table scored on EVALUATION.md's protocol, beside in-process
comparisons with the ablations and baselines."""

import dataclasses
import json

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster.defs.dataset import daily_partitions, partition_date
from unirec_dagster.defs.ingest import raw_events
from unirec_dagster.defs.presentation import comparison_table
from unirec_dagster.defs.resources import WAREHOUSE_POOL, DatasetResource, ModelStoreResource, TrackingResource
from unirec_dagster.defs.serving import recommendations
from unirec_dagster.defs.training import finetuned_recommender
from unirec_dagster.evaluation.split import TEST_WINDOW_DAYS
from unirec_dagster.evaluation.steps import SERVED, run_evaluation
from unirec_dagster.tracking import TrackedRun


class EvaluationConfig(dg.Config):
    window_days: int = TEST_WINDOW_DAYS  # the test window [C, C + window_days)


@dg.asset(group_name="evaluation", kinds={"duckdb"}, partitions_def=daily_partitions,
          deps=[recommendations, finetuned_recommender,
                # the test window: the days after the partition (absent for the newest partitions)
                dg.AssetDep(raw_events, partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=1, end_offset=TEST_WINDOW_DAYS, allow_nonexistent_upstream_partitions=True))],
          pool=WAREHOUSE_POOL, code_version="3",
          description="eval.metrics: the rows of serving.recommendations for the partition scored on the test "
                      "window after the cutoff (when the warehouse has it), every evaluated user counting; beside "
                      "them the fine-tuned model in process, its ablations and the baselines, per slice.")
def model_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, duckdb: DuckDBResource,
                     dataset: DatasetResource, model_store: ModelStoreResource, tracking: TrackingResource):
    spec, run_date = dataset.load(), partition_date(context)
    with duckdb.get_connection() as conn:
        result = run_evaluation(conn, spec, run_date, model_store.for_warehouse(conn, spec), config.window_days,
                                context.run_id, log=context.log.info)
    tracked = tracking.record(context, TrackedRun(
        f"evaluation {run_date}", params={"window_days": config.window_days, "model": result.model_version},
        metrics={f"{r.split}/{r.slice}/{r.model}/{r.metric}@{r.k}": r.value for r in result.rows
                 if r.metric in ("recall", "ndcg") and r.k == 20},
        tables={"evaluation.json": json.dumps([dataclasses.asdict(r) for r in result.rows], indent=1, default=str)},
        tags={"checkpoint": result.model_version or "", "strongest_peer": result.peer or ""}))
    metadata: dict = {**tracked, "dagster/row_count": len(result.rows), "model": result.model_version,
                      "evaluated_users": result.test_users, "users_without_a_row": result.unserved_users,
                      "validation": comparison_table(result.rows, "validation")}
    if not result.test_users:  # the newest days: their test window has not happened yet
        newest = result.newest_evaluated
        metadata["test_window"] = dg.MetadataValue.md(
            "No events after this partition's cutoff in the warehouse yet, so no test figures. "
            + (f"The newest partition with them is **{newest}**: open its materialization." if newest else
               "No partition has test figures yet: materialize model_evaluation for a historic day."))
        return dg.MaterializeResult(metadata=metadata)
    # numbers (not tables) so Dagster's Plots tab draws them over partitions
    for metric in ("recall", "ndcg"):
        served, peer = result.value(SERVED, metric), result.value(result.peer, metric) if result.peer else None
        metadata[f"served_{metric}@20"] = served
        if peer:
            metadata[f"strongest_peer_{metric}@20"] = peer
            metadata[f"served_over_peer_{metric}@20"] = round(served / peer, 4) if served is not None else None
    metadata |= {"strongest_peer": result.peer or "",
                 "test_comparison": comparison_table(result.rows, "test"),
                 "cold_users": comparison_table(result.rows, "test", "cold_users"),
                 "new_items": comparison_table(result.rows, "test", "new_items")}
    return dg.MaterializeResult(metadata={k: v for k, v in metadata.items() if v is not None})
