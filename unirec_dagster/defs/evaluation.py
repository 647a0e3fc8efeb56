"""model_evaluation: the served table scored on EVALUATION.md's protocol, beside in-process
comparisons with the ablations and baselines."""

import dataclasses
import json

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster.defs.dataset import daily_partitions, partition_date
from unirec_dagster.defs.ingest import raw_events
from unirec_dagster.defs.presentation import comparison_table
from unirec_dagster.defs.resources import (
    OWNERS,
    WAREHOUSE_POOL,
    DatasetResource,
    ModelStoreResource,
    TrackingResource,
    warehouse_table,
)
from unirec_dagster.defs.serving import recommendations
from unirec_dagster.defs.training import finetuned_recommender
from unirec_dagster.evaluation.split import TEST_WINDOW_DAYS
from unirec_dagster.evaluation.steps import SERVED, run_evaluation
from unirec_dagster.tracking import TrackedRun


class EvaluationConfig(dg.Config):
    window_days: int = TEST_WINDOW_DAYS  # the test window [C, C + window_days)


DRIFT_NIGHTS = 3  # served below the strongest simple peer this many evaluated nights in a row: warn


def nights_below_peer(ratios: list[tuple[str, float]], night: str) -> list[str]:
    """The evaluated nights up to `night`, newest first, for which the served table stayed below the
    strongest simple peer (served/peer Recall@20 under 1) without a break."""
    below = []
    for evaluated, ratio in sorted(((n, r) for n, r in ratios if n <= night), reverse=True):
        if ratio >= 1:
            break
        below.append(evaluated)
    return below


def served_over_peer_history(instance: dg.DagsterInstance, limit: int = 100) -> list[tuple[str, float]]:
    """(night, served/peer Recall@20) of the newest model_evaluation of each evaluated night."""
    records = instance.fetch_materializations(dg.AssetKey("model_evaluation"), limit=limit).records
    newest: dict[str, float] = {}
    for record in records:  # newest first
        m = record.asset_materialization
        value = m.metadata["served_over_peer_recall@20"].value if m and "served_over_peer_recall@20" in m.metadata else None
        if m and m.partition and m.partition not in newest and isinstance(value, (int, float)):
            newest[m.partition] = float(value)
    return list(newest.items())


@dg.asset(group_name="evaluation", owners=OWNERS, kinds={"duckdb"},
          metadata=warehouse_table("eval.metrics"), partitions_def=daily_partitions,
          deps=[recommendations, finetuned_recommender,
                # the test window: the days after the partition (absent for the newest partitions)
                dg.AssetDep(raw_events, partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=1, end_offset=TEST_WINDOW_DAYS, allow_nonexistent_upstream_partitions=True))],
          pool=WAREHOUSE_POOL, code_version="3",
          check_specs=[dg.AssetCheckSpec(
              "served_vs_peer", asset="model_evaluation",
              description=f"Drift: warns when the served table's test Recall@20 has been below the strongest "
                          f"simple baseline's on {DRIFT_NIGHTS} evaluated nights in a row (this one included).")],
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
        yield dg.MaterializeResult(metadata=metadata)
        yield dg.AssetCheckResult(check_name="served_vs_peer", passed=True, severity=dg.AssetCheckSeverity.WARN,
                                  description="no test figures yet: nothing to compare")
        return
    # numbers (not tables) so Dagster's metadata plots draw them night after night
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
    yield dg.MaterializeResult(metadata={k: v for k, v in metadata.items() if v is not None})
    night, ratio = context.partition_key, metadata.get("served_over_peer_recall@20")
    history = [(n, r) for n, r in served_over_peer_history(context.instance) if n != night]
    below = nights_below_peer(history + ([(night, ratio)] if ratio is not None else []), night)
    yield dg.AssetCheckResult(
        check_name="served_vs_peer", passed=len(below) < DRIFT_NIGHTS, severity=dg.AssetCheckSeverity.WARN,
        metadata={"served_over_peer_recall@20": ratio if ratio is not None else -1.0,
                  "nights_below_peer_in_a_row": len(below)},
        description=(f"served below {result.peer or 'the strongest peer'} on {len(below)} evaluated night(s) in a "
                     f"row ({', '.join(sorted(below))})" if below else
                     f"served at {ratio:.2f}x {result.peer}" if ratio is not None else "no peer to compare"))
