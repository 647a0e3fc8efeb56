"""The pipeline's model steps as plain functions (the Dagster assets call these; tests too):
pretraining, fine-tuning with its quality gate and ablations, and evaluation. Each returns what it
made (a checkpoint, a gate verdict, metric rows), not a path to open again."""

from __future__ import annotations

import datetime as dt
from dataclasses import astuple, dataclass, field
from typing import Callable

import duckdb
import pyarrow as pa

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.evaluation.als import fit_als
from unirec_dagster.evaluation.evaluate import SliceResult, evaluate
from unirec_dagster.evaluation.served import evaluate_served
from unirec_dagster.evaluation.split import load_holdout
from unirec_dagster.graph import entity_fingerprint, load_graph, snapshot_params
from unirec_dagster.model.checkpoint import Checkpoint, CheckpointStore, check_compatible
from unirec_dagster.model.config import EncoderConfig, FinetuneConfig, PretrainConfig
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.model.trainer import Log, TrainResult
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.training.context import served_model, text_view
from unirec_dagster.training.fit import (FittedRecommender, VariantTrainer, cutoff_data, fit_recommender, recall_at_20,
                                         train_variant, validation_split)
from unirec_dagster.warehouse import ensure_schema, transaction

PRETRAINED, FINETUNED = "pretrained", "finetuned"
MF_ABLATION, FROM_SCRATCH = "mf-ablation", "from-scratch"
ABLATION_LABELS = {MF_ABLATION: "BPR-MF (the same trainer: no graph, no text, no pretraining)",
                   FROM_SCRATCH: "full model from scratch (no pretraining)"}
PRETRAINED_WINDOW_DAYS = 7  # fine-tuning of day D takes the newest pretrained partition in [D - 6, D]


def _fingerprint(conn: duckdb.DuckDBPyConnection):
    return lambda n: entity_fingerprint(conn, n)


def validation_days(conn: duckdb.DuckDBPyConnection, run_date: dt.date) -> int:
    """The validation window of the models of `run_date`, as the knowledge_graph partition chose it."""
    return snapshot_params(conn, run_date).validation_days


Pretrainer = Callable[..., TrainResult]  # pretrain's signature: in process, or workers it launches


def run_pretraining(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, config: PretrainConfig,
                    store: CheckpointStore, log: Log | None = None, pretrainer: Pretrainer = pretrain) -> Checkpoint:
    """Pretrain on the KG as of run_date - validation_days (so fine-tuning's validation window stays
    unseen), warm-started from the newest pretrained checkpoint of an earlier partition.
    `pretrainer` trains: `pretrain` in this process, or a launcher of distributed workers."""
    as_of = run_date - dt.timedelta(days=validation_days(conn, run_date))
    graph = load_graph(conn, as_of)
    text = text_view(conn) if config.encoder.use_text else None
    previous = store.latest(PRETRAINED, partition_before=run_date)
    if previous is not None:
        check_compatible(previous, _fingerprint(conn))
        if log:
            log(f"warm start from {previous.version} ({previous.manifest['num_entities']:,} entities; "
                f"{graph.num_entities - previous.manifest['num_entities']:,} new)")
    result = pretrainer(graph, text, config, spec.events.positive_event_type, previous.state if previous else None, log)
    return store.save(
        PRETRAINED, run_date, result.model, as_of, graph.relation_names, entity_fingerprint(conn, graph.num_entities),
        config=config.model_dump(), parent=previous.version if previous else None, history=result.history,
        final_losses={k: v for k, v in result.history[-1].items() if k != "epoch"}, seconds=result.seconds,
        edges_per_second=result.examples_per_second, device=result.device,
        relation_weights=result.model.relation_weights(graph.relation_names), world_size=result.world_size)


@dataclass
class GateResult:
    passed: bool
    model_recall: float
    recent_popular_recall: float
    mf_recall: float

    @classmethod
    def judge(cls, model_recall: float, recent_popular_recall: float, mf_recall: float) -> "GateResult":
        """The rule: the served blend must beat both RecentPopular and BPR-MF on validation Recall@20."""
        return cls(model_recall > max(recent_popular_recall, mf_recall), model_recall, recent_popular_recall, mf_recall)

    @property
    def reason(self) -> str:
        verdict = "beats" if self.passed else "does not beat"
        return (f"validation Recall@20 {self.model_recall:.4f} {verdict} RecentPopular {self.recent_popular_recall:.4f}"
                f" and BPR-MF {self.mf_recall:.4f}")


@dataclass
class FinetuningResult:
    checkpoint: Checkpoint                 # the candidate for serving (promoted when the gate passed)
    gate: GateResult
    ablations: dict[str, Checkpoint] = field(default_factory=dict)


def mf_config(config: FinetuneConfig) -> FinetuneConfig:
    """The gate's reference, EVALUATION.md's BPR-MF: the same trainer with no graph, no text, no
    pretraining and the BPR loss (4x cheaper per epoch than the softmax, which matters nightly)."""
    return config.model_copy(update={"loss": "bpr", "encoder": EncoderConfig(
        dim=config.encoder.dim, layers=0, use_graph=False, use_text=False, user_readout=False)})


def run_finetuning(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, config: FinetuneConfig,
                   store: CheckpointStore, from_scratch: bool = False, log: Log | None = None,
                   trainer: VariantTrainer = train_variant) -> FinetuningResult:
    """Fine-tune for serving on run_date (cutoff = the next day) from the newest pretrained
    checkpoint of the last week, and judge it against RecentPopular and BPR-MF on the
    validation window. BPR-MF (and, with `from_scratch`, the full model without
    pretraining) are trained on the same splits and kept for the evaluation. `trainer` trains
    each of them: `train_variant` in this process, or a launcher of distributed workers."""
    cutoff = run_date + dt.timedelta(days=1)
    pretrained = store.latest(PRETRAINED, run_date, partition_from=run_date - dt.timedelta(days=PRETRAINED_WINDOW_DAYS - 1))
    if pretrained is None:
        raise LookupError(f"no pretrained checkpoint of a partition in {run_date - dt.timedelta(days=6)}.."
                          f"{run_date} in {store.root}: materialize pretrained_encoder for one of those days first")
    check_compatible(pretrained, _fingerprint(conn))
    validation = validation_split(conn, spec, cutoff, validation_days(conn, run_date))
    if pretrained.snapshot_date >= validation.known.cutoff:
        raise ValueError(f"{pretrained.version} saw the KG of {pretrained.snapshot_date}, inside the validation window "
                         f"from {validation.known.cutoff}: its knowledge_graph partition used another validation_days")
    final = cutoff_data(conn, spec, cutoff)
    text = text_view(conn) if config.encoder.use_text else None
    fitted = fit_recommender(validation, final, config, text, pretrained.state, log=log, trainer=trainer)
    recent = recall_at_20(Scorer(validation.known.signals, {"recent_popularity": 1.0}), validation.holdout)
    variants = {MF_ABLATION: fit_recommender(validation, final, mf_config(config), None, None, blend=False, log=log,
                                             trainer=trainer)}
    if from_scratch:
        variants[FROM_SCRATCH] = fit_recommender(validation, final, config, text, None, log=log, trainer=trainer)
    gate = GateResult.judge(fitted.validation["recall@20"], recent["recall@20"],
                            variants[MF_ABLATION].validation["recall@20"])
    fingerprint = entity_fingerprint(conn, final.graph.num_entities)

    def save(kind: str, fit: FittedRecommender, variant_config: FinetuneConfig, **extra) -> Checkpoint:
        return store.save(
            kind, run_date, fit.model, run_date, final.graph.relation_names, fingerprint,
            config=variant_config.model_dump(), cutoff=cutoff.isoformat(),
            validation_cutoff=validation.known.cutoff.isoformat(), blend=fit.blend, best_epoch=fit.best_epoch,
            validation=fit.validation, history=fit.history, seconds=fit.seconds,
            device=str(next(fit.model.parameters()).device), world_size=fit.world_size, **extra)

    ablations = {kind: save(kind, fit, mf_config(config) if kind == MF_ABLATION else config, parent=None)
                 for kind, fit in variants.items()}
    checkpoint = save(FINETUNED, fitted, config, parent=pretrained.version, promoted=gate.passed,
                      gate={"passed": gate.passed, "reason": gate.reason,
                            "recent_popular_recall@20": gate.recent_popular_recall, "mf_recall@20": gate.mf_recall})
    return FinetuningResult(checkpoint, gate, ablations)


def promoted_checkpoint(store: CheckpointStore, run_date: dt.date) -> Checkpoint:
    """The fine-tuned checkpoint of the newest partition up to run_date that passed the gate."""
    found = store.latest(FINETUNED, run_date, where=lambda m: m.get("promoted"))
    if found is None:
        raise LookupError(f"no promoted fine-tuned model for {run_date} in {store.root}: materialize "
                          "finetuned_recommender first (its quality gate must pass)")
    return found


@dataclass(frozen=True)
class MetricRow:
    """One row of eval.metrics."""

    model: str
    cutoff: dt.date
    split: str        # "validation" (the window before the cutoff, used for choices) or "test" (report only)
    slice: str
    metric: str
    k: int | None
    value: float
    users: int


def metric_rows(model: str, split: str, cutoff: dt.date, results: list[SliceResult]) -> list[MetricRow]:
    out = []
    for r in results:
        for name, value in r.metrics.items():
            metric, _, k = name.partition("@")
            out.append(MetricRow(model, cutoff, split, r.slice, metric, int(k) if k else None, value, r.users))
    return out


BASELINES = {"MostPopular": {"popularity": 1.0}, "RecentPopular": {"recent_popularity": 1.0},
             "ItemKNN": {"co_purchase": 1.0}}
SERVED = "served table (serving.recommendations)"


@dataclass
class EvaluationResult:
    rows: list[MetricRow]
    model_version: str
    test_users: int          # evaluated users of the test window (0 when the warehouse has no day after it)
    unserved_users: int      # of them, users without a row in the served partition (they score zero)

    def headline(self) -> dict[str, float]:
        """The served table's test figures over all evaluated users."""
        return {f"{r.metric}@{r.k}" if r.k else r.metric: r.value for r in self.rows
                if r.model == SERVED and r.split == "test" and r.slice == "all"}


def run_evaluation(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, store: CheckpointStore,
                   window_days: int, run_id: str | None = None, log: Log | None = None) -> EvaluationResult:
    """eval.metrics for the partition. The headline scores the rows written to
    serving.recommendations for it, as a reader gets them, every evaluated user counting; beside it,
    in process, the fine-tuned model, its ablations and every baseline on the same test window
    after the cutoff (when the warehouse has it), and the validation figures. Replaces the
    partition's earlier rows."""
    checkpoint = store.of_partition(FINETUNED, run_date)
    cutoff = run_date + dt.timedelta(days=1)
    window_end = cutoff + dt.timedelta(days=window_days)
    out = [MetricRow(checkpoint.version, dt.date.fromisoformat(checkpoint.manifest["validation_cutoff"]), "validation",
                     "all", metric.split("@")[0], 20, checkpoint.manifest["validation"][metric],
                     checkpoint.manifest["validation"]["users"]) for metric in ("recall@20", "ndcg@20")]
    text = text_view(conn)
    served = served_model(conn, spec, checkpoint, run_date, text).scorer
    holdout = load_holdout(conn, spec, served.signals.data, window_end)
    unserved = 0
    if len(holdout.users):
        served_results, unserved = evaluate_served(conn, run_date, holdout, served.signals.data)
        out += metric_rows(SERVED, "test", cutoff, served_results)
        if log:
            log(f"served table: {len(holdout.users):,} evaluated users, {unserved:,} without a row; Recall@20 "
                f"{served_results[0].metrics['recall@20']:.4f}, NDCG@20 {served_results[0].metrics['ndcg@20']:.4f}")
        out += metric_rows(f"{checkpoint.version} (in process)", "test", cutoff, evaluate(served, holdout))
        out += metric_rows(f"{checkpoint.version} (model only, no blend)", "test", cutoff,
                           evaluate(Scorer(served.signals, {"model": 1.0}, served.embeddings), holdout))
        for name, weights in BASELINES.items():
            out += metric_rows(name, "test", cutoff, evaluate(Scorer(served.signals, weights), holdout))
        out += metric_rows("ALS (64 factors)", "test", cutoff,
                           evaluate(Scorer(served.signals, {"model": 1.0}, fit_als(served.signals.data)), holdout))
        for kind, label in ABLATION_LABELS.items():
            ablation = store.latest(kind, run_date, partition_from=run_date)
            if ablation is not None:
                out += metric_rows(label, "test", cutoff, evaluate(
                    served_model(conn, spec, ablation, run_date, text).scorer, holdout))
    elif log:
        log(f"no events after {cutoff} in the warehouse yet: validation metrics only")
    write_metrics(conn, run_date, out, run_id)
    return EvaluationResult(out, checkpoint.version, len(holdout.users), unserved)


def write_metrics(conn: duckdb.DuckDBPyConnection, partition: dt.date, metrics: list[MetricRow],
                  run_id: str | None) -> None:
    """Replace the partition's rows of eval.metrics: a re-run replaces, it never adds."""
    ensure_schema(conn)
    columns = ["model", "cutoff", "split", "slice", "metric", "k", "value", "users"]
    table = pa.table({name: [astuple(m)[i] for m in metrics] for i, name in enumerate(columns)},
                     schema=pa.schema([("model", pa.string()), ("cutoff", pa.date32()), ("split", pa.string()),
                                       ("slice", pa.string()), ("metric", pa.string()), ("k", pa.int32()),
                                       ("value", pa.float64()), ("users", pa.int64())]))
    with transaction(conn):
        conn.execute("DELETE FROM eval.metrics WHERE partition_date = $d", {"d": partition})
        conn.register("new_metrics", table)
        conn.execute("INSERT INTO eval.metrics BY NAME SELECT $d AS partition_date, *, $run AS run_id, "
                     "now() AS computed_at FROM new_metrics", {"d": partition, "run": run_id})
        conn.unregister("new_metrics")
