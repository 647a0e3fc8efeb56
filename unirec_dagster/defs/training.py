"""Model assets: multi-task pretraining and fine-tuning with its quality gate."""

import datetime as dt
import json

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from unirec_dagster.defs.dataset import daily_partitions, partition_date, weekly_partitions
from unirec_dagster.defs.distributed import torchrun_finetuner, torchrun_pretrainer
from unirec_dagster.defs.features import item_text_embeddings
from unirec_dagster.defs.graph import knowledge_graph
from unirec_dagster.defs.presentation import curves_image, gate_table, history_table, importance_table
from unirec_dagster.defs.resources import (
    OWNERS,
    WAREHOUSE_POOL,
    ComputeResource,
    DatasetResource,
    ModelStoreResource,
    TextModelResource,
    TrackingResource,
)
from unirec_dagster.model.config import EncoderConfig, FinetuneConfig, PretrainConfig
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.ranking.candidates import CandidateConfig
from unirec_dagster.ranking.ranker import RankerConfig
from unirec_dagster.tracking import TrackedRun, history_curves
from unirec_dagster.training.fit import train_variant
from unirec_dagster.training.ranking import RankingSettings
from unirec_dagster.training.steps import PRETRAINED_FRESH_DAYS, PRETRAINED_WINDOW_DAYS, run_finetuning, run_pretraining

# On Kubernetes (deploy/: the K8s run launcher or k8s_job_executor) the training steps ask for a GPU;
# elsewhere these tags are ignored and the device is chosen as usual (CUDA when present).
GPU_STEP = {"dagster-k8s/config": {"container_config": {"resources": {
    "requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"},
    "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"}}}}}


class EncoderRunConfig(EncoderConfig, dg.Config):
    """The EncoderConfig fields (Dagster config nests only dg.Config classes)."""


class PretrainingConfig(PretrainConfig, dg.Config):
    """Run config of pretrained_encoder: the PretrainConfig fields."""

    encoder: EncoderRunConfig = EncoderRunConfig()


class CandidateRunConfig(CandidateConfig, dg.Config):
    """The CandidateConfig fields: candidates per generator."""


class RankerRunConfig(RankerConfig, dg.Config):
    """The RankerConfig fields: the LightGBM ranker."""


class RankingRunConfig(RankingSettings, dg.Config):
    """The RankingSettings fields."""

    candidates: CandidateRunConfig = CandidateRunConfig()
    ranker: RankerRunConfig = RankerRunConfig()


class FinetuningConfig(FinetuneConfig, dg.Config):
    """Run config of finetuned_recommender: the FinetuneConfig fields, the two ranking stages, and
    which comparison models to also train on the same splits (for model_evaluation)."""

    encoder: EncoderRunConfig = EncoderRunConfig()
    ranking: RankingRunConfig = RankingRunConfig()
    from_scratch: bool = Field(False, description="Also train the full model without pretraining.")
    mf_ablation: bool = Field(False, description="Also train BPR-MF (no graph, no text, no pretraining).")


@dg.asset(group_name="training", owners=OWNERS, kinds={"pytorch"}, partitions_def=weekly_partitions,
          deps=[dg.AssetDep(knowledge_graph, partition_mapping=dg.TimeWindowPartitionMapping(
              allow_nonexistent_upstream_partitions=True)), item_text_embeddings],
          pool=WAREHOUSE_POOL, code_version="3", op_tags=GPU_STEP,
          description="Self-supervised multi-task pretraining, one partition a week (Sunday to Saturday), on the "
                      "validation KG snapshot of the week's Saturday (as of validation_days before it), warm-started "
                      "from an earlier week; "
                      "with world_size > 1 in torchrun workers under DistributedDataParallel, through Dagster Pipes.")
def pretrained_encoder(context: dg.AssetExecutionContext, config: PretrainingConfig, duckdb: DuckDBResource,
                       dataset: DatasetResource, model_store: ModelStoreResource,
                       pipes_subprocess_client: dg.PipesSubprocessClient, text_model: TextModelResource,
                       compute: ComputeResource, tracking: TrackingResource):
    spec = dataset.load()
    settings = PretrainConfig(**{**config.model_dump(), "device": compute.device_for(config.device)})
    pretrainer = torchrun_pretrainer(context, pipes_subprocess_client) if settings.world_size > 1 else pretrain
    with duckdb.get_connection() as conn:
        store = model_store.for_warehouse(conn, spec)
        checkpoint = run_pretraining(conn, spec, partition_date(context), settings, store, log=context.log.info,
                                     pretrainer=pretrainer, text_model=text_model.name)
    m = checkpoint.manifest
    tracked = tracking.record(context, TrackedRun(
        f"pretraining {m['partition']}", params=settings.model_dump(), curves=history_curves(m["history"]),
        metrics={**{f"final_{k}": v for k, v in m["final_losses"].items()}, "seconds": m["seconds"],
                 "edges_per_second": m["edges_per_second"]},
        tables={"relation_weights.json": json.dumps(m["relation_weights"], indent=1)},
        tags={"checkpoint": m["version"], "parent": m["parent"] or ""}))
    return dg.MaterializeResult(metadata={
        **tracked, "version": m["version"], "path": str(checkpoint.path), "kg_snapshot": m["kg_snapshot"],
        "parent": m["parent"] or "", "epochs": len(m["history"]), "device": m["device"],
        "parameters": m["parameters"], "edges_per_second": m["edges_per_second"], "seconds": m["seconds"],
        "final_losses": m["final_losses"], "loss_curves": history_table(m["history"]),
        "loss_curves_image": curves_image(m["history"], f"pretraining {m['partition']}"),
        "relation_weights": m["relation_weights"], "world_size": m["world_size"]})


@dg.asset(group_name="training", owners=OWNERS, kinds={"pytorch"}, partitions_def=daily_partitions,
          deps=[knowledge_graph, item_text_embeddings,
                # weekly pretraining: the newest week of the last four, ended by the day, is the parent
                dg.AssetDep(pretrained_encoder, partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=-(PRETRAINED_WINDOW_DAYS // 7), end_offset=0,
                    allow_nonexistent_upstream_partitions=True))],
          pool=WAREHOUSE_POOL, code_version="3", op_tags=GPU_STEP,
          check_specs=[dg.AssetCheckSpec(
              "quality_gate", asset="finetuned_recommender",
              description="The two-stage ranker serves only when its out-of-fold validation Recall@20 beats every "
                          "simple baseline (popularity over all history, the last 10% of it, 7, 30 and 90 days and "
                          "within the user's segment; EASE^R, RP3beta and EASE^R + recent popularity tuned on the "
                          "same window) by more than noise: the lower end of a 90% paired bootstrap interval over "
                          "the validation users above zero. Otherwise the strongest baseline serves and this check "
                          "warns. It blocks nothing: a night always has a policy to serve."),
              dg.AssetCheckSpec(
                  "finite_weights", asset="finetuned_recommender", blocking=True,
                  description="Every weight of the fine-tuned model is finite (no NaN or infinity is served)."),
              dg.AssetCheckSpec(
                  "pretrained_age", asset="finetuned_recommender",
                  description=f"The pretrained start is at most {PRETRAINED_FRESH_DAYS} days older than the "
                              "partition (weekly pretraining ran); warns otherwise.")],
          description="Fine-tuned from the newest pretrained_encoder partition of the last 28 days (the "
                      "pretrained_age check warns past 7) for serving on the "
                      "partition date: early-stopped on the validation window before the cutoff, then retrained up "
                      "to it. On the same window the classic peers are tuned and the two-stage ranker (candidates "
                      "from the graph model, EASE^R, RP3beta, co-purchase, trending and new items; LightGBM "
                      "LambdaRank) is fitted. With world_size > 1 each model trains in torchrun workers, through "
                      "Dagster Pipes.")
def finetuned_recommender(context: dg.AssetExecutionContext, config: FinetuningConfig, duckdb: DuckDBResource,
                          dataset: DatasetResource, model_store: ModelStoreResource,
                          pipes_subprocess_client: dg.PipesSubprocessClient, text_model: TextModelResource,
                          compute: ComputeResource, tracking: TrackingResource):
    spec = dataset.load()
    settings = FinetuneConfig(**{**config.model_dump(exclude={"from_scratch", "mf_ablation", "ranking"}),
                                 "device": compute.device_for(config.device)})
    trainer = torchrun_finetuner(context, pipes_subprocess_client) if settings.world_size > 1 else train_variant
    with duckdb.get_connection() as conn:
        result = run_finetuning(conn, spec, partition_date(context), settings,
                                model_store.for_warehouse(conn, spec), from_scratch=config.from_scratch,
                                log=context.log.info, trainer=trainer,
                                ranking=RankingSettings(**config.ranking.model_dump()), mf_ablation=config.mf_ablation,
                                text_model=text_model.name)
    m, gate = result.checkpoint.manifest, result.gate
    ranking = m["ranking"] or {}
    tracked = tracking.record(context, TrackedRun(
        f"fine-tuning {m['partition']}", params={**settings.model_dump(), "ranking": config.ranking.model_dump()},
        curves=history_curves(m["history"]) | {"ranker_cv_ndcg@20": ranking.get("cv_curve") or []},
        metrics={**{f"graph_model_{k}": v for k, v in m["validation"].items()},
                 **{f"ranker_validation_{k}": v for k, v in (ranking.get("validation") or {}).items()},
                 "best_epoch": m["best_epoch"], "ranker_rounds": ranking.get("rounds", 0), "seconds": m["seconds"]},
        tables={"gate.json": json.dumps(m["gate"], indent=1),
                "classic_validation.json": json.dumps(m["classic"]["validation"], indent=1),
                "feature_importance.json": json.dumps(ranking.get("importances") or {}, indent=1),
                "candidate_recall.json": json.dumps(ranking.get("candidate_recall") or {}, indent=1)},
        tags={"checkpoint": m["version"], "parent": m["parent"] or "", "policy": m["policy"]}))
    yield dg.MaterializeResult(metadata={
        **tracked, "version": m["version"], "path": str(result.checkpoint.path), "parent": m["parent"], "cutoff": m["cutoff"],
        "policy": m["policy"], "best_epoch": m["best_epoch"], "blend": m["blend"],
        "graph_model_validation": m["validation"], "device": m["device"], "seconds": m["seconds"],
        "validation_curve": history_table(m["history"]), "world_size": m["world_size"],
        "curves_image": curves_image(m["history"], f"fine-tuning, validation fit {m['validation_cutoff']}"),
        "classic_validation": m["classic"]["validation"],
        "ranker_validation": ranking.get("validation") or {}, "ranker_rounds": ranking.get("rounds", 0),
        "candidate_recall": ranking.get("candidate_recall") or {},
        "candidates_per_user": ranking.get("candidates_per_user", 0.0),
        "feature_importance": importance_table(ranking.get("importances") or {}),
        "ablations": {kind: c.version for kind, c in result.ablations.items()}})
    parent_age = (partition_date(context) - dt.date.fromisoformat(m["parent"].split("-", 1)[1][:10])).days \
        if m["parent"] else None
    broken = result.checkpoint.non_finite()
    yield dg.AssetCheckResult(check_name="finite_weights", passed=not broken,
                              description=f"non-finite tensors: {', '.join(broken)}" if broken else "all finite",
                              metadata={"non_finite_tensors": len(broken)})
    yield dg.AssetCheckResult(
        check_name="pretrained_age", passed=parent_age is not None and parent_age <= PRETRAINED_FRESH_DAYS,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"fine-tuned from {m['parent']}, {parent_age} days old" if m["parent"] else
                     "trained without a pretrained start"),
        metadata={"parent": m["parent"] or "", "age_days": parent_age if parent_age is not None else -1})
    yield dg.AssetCheckResult(
        check_name="quality_gate", passed=gate.passed, description=gate.reason, severity=dg.AssetCheckSeverity.WARN,
        metadata={"policy": gate.policy, "baseline": gate.baseline,
                  "baseline_recall@20": gate.baseline_metrics["recall@20"],
                  "ranker_recall@20": (gate.ranker or {}).get("recall@20", 0.0),
                  "validation_users": gate.users,
                  "difference_low": gate.intervals.get(gate.baseline, (0.0, 0.0))[0],
                  "difference_high": gate.intervals.get(gate.baseline, (0.0, 0.0))[1],
                  "simple_baselines": gate_table(gate)})
