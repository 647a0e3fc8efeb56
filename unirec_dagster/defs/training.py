"""Model assets: multi-task pretraining, fine-tuning with its quality gate, evaluation."""

import datetime as dt

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster import settings
from unirec_dagster.defs.dataset import SPEC, daily_partitions
from unirec_dagster.defs.features import item_text_embeddings
from unirec_dagster.defs.graph import knowledge_graph
from unirec_dagster.defs.resources import WAREHOUSE_POOL
from unirec_dagster.model.checkpoint import list_checkpoints, load_checkpoint
from unirec_dagster.model.config import EncoderConfig, FinetuneConfig, PretrainConfig
from unirec_dagster.training.steps import comparison_table, run_evaluation, run_finetuning, run_pretraining


class EncoderRunConfig(EncoderConfig, dg.Config):
    """The EncoderConfig fields (Dagster config nests only dg.Config classes)."""


class PretrainingConfig(PretrainConfig, dg.Config):
    """Run config of pretrained_encoder: the PretrainConfig fields."""

    encoder: EncoderRunConfig = EncoderRunConfig()


class FinetuningConfig(FinetuneConfig, dg.Config):
    """Run config of finetuned_recommender: the FinetuneConfig fields."""

    encoder: EncoderRunConfig = EncoderRunConfig()


class EvaluationConfig(dg.Config):
    window_days: int = 14
    ablations: bool = True  # also train the MF ablation and the from-scratch model on the same split


def _losses_table(history: list[dict]) -> dg.MetadataValue:
    keys = [k for k in history[0] if k != "epoch"] if history else []
    lines = ["| epoch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {row.get('epoch', '')} | " + " | ".join(f"{row.get(k, 0):.4f}" for k in keys) + " |"
              for row in history if "epoch" in row]
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(group_name="training", kinds={"pytorch"}, partitions_def=daily_partitions,
          deps=[knowledge_graph, item_text_embeddings], pool=WAREHOUSE_POOL, code_version="2",
          description="Self-supervised multi-task pretraining on the KG as of the run date minus holdout_days "
                      "(weekly schedule); safetensors + manifest under the models directory.")
def pretrained_encoder(context: dg.AssetExecutionContext, config: PretrainingConfig, duckdb: DuckDBResource):
    run_date = dt.date.fromisoformat(context.partition_key)
    with duckdb.get_connection() as conn:
        path = run_pretraining(conn, SPEC, run_date, PretrainConfig(**config.model_dump()), settings.models_dir(),
                               log=context.log.info)
    m = load_checkpoint(path).manifest
    return dg.MaterializeResult(metadata={
        "version": m["version"], "path": str(path), "kg_snapshot": m["kg_snapshot"], "parent": m["parent"] or "",
        "epochs": len(m["history"]), "device": m["device"], "parameters": m["parameters"],
        "edges_per_second": m["edges_per_second"], "seconds": m["seconds"], "final_losses": m["final_losses"],
        "loss_curves": _losses_table(m["history"]), "relation_weights": m["relation_weights"]})


@dg.asset(group_name="training", kinds={"pytorch"}, partitions_def=daily_partitions,
          deps=[knowledge_graph, item_text_embeddings, pretrained_encoder], pool=WAREHOUSE_POOL, code_version="2",
          check_specs=[dg.AssetCheckSpec(
              "quality_gate", asset="finetuned_recommender", blocking=True,
              description="Promote only a model that beats RecentPopular and the MF ablation on validation Recall@20.")],
          description="Fine-tuned from the newest pretrained checkpoint for serving on the partition date: "
                      "early-stopped and blended on the validation window before the cutoff.")
def finetuned_recommender(context: dg.AssetExecutionContext, config: FinetuningConfig, duckdb: DuckDBResource):
    run_date = dt.date.fromisoformat(context.partition_key)
    with duckdb.get_connection() as conn:
        path, gate = run_finetuning(conn, SPEC, run_date, FinetuneConfig(**config.model_dump()), settings.models_dir(),
                                    log=context.log.info)
    m = load_checkpoint(path).manifest
    yield dg.MaterializeResult(metadata={
        "version": m["version"], "path": str(path), "parent": m["parent"], "cutoff": m["cutoff"],
        "best_epoch": m["best_epoch"], "blend": m["blend"], "validation": m["validation"], "device": m["device"],
        "seconds": m["seconds"], "promoted": m["promoted"], "validation_curve": _losses_table(m["history"])})
    yield dg.AssetCheckResult(check_name="quality_gate", passed=gate.passed, description=gate.reason, metadata={
        "validation_recall@20": gate.model_recall, "recent_popular_recall@20": gate.recent_popular_recall,
        "mf_ablation_recall@20": gate.mf_recall})


@dg.asset(group_name="training", kinds={"duckdb"}, partitions_def=daily_partitions, deps=[finetuned_recommender],
          pool=WAREHOUSE_POOL, code_version="2",
          description="eval.metrics: the fine-tuned model and every baseline on the test window after the cutoff "
                      "(when the data has it) and the validation window before it, per slice.")
def model_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, duckdb: DuckDBResource):
    run_date = dt.date.fromisoformat(context.partition_key)
    candidates = [m for m in list_checkpoints(settings.models_dir(), "finetuned") if m["kg_snapshot"] == run_date.isoformat()]
    if not candidates:
        raise LookupError(f"no fine-tuned checkpoint for {run_date}: materialize finetuned_recommender for it first")
    with duckdb.get_connection() as conn:
        out = run_evaluation(conn, SPEC, run_date, candidates[-1]["path"], config.window_days, config.ablations,
                             context.run.run_id, log=context.log.info)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(out), "model": candidates[-1]["version"],
        "test_comparison": dg.MetadataValue.md(comparison_table(out, "test")),
        "cold_users": dg.MetadataValue.md(comparison_table(out, "test", "cold_users"))})
