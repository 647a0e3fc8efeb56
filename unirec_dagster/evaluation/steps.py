"""The evaluation step as a plain function (the model_evaluation asset calls it; tests too): the
served table scored from outside on the test window after the cutoff, every evaluated user counted,
beside the served policy in process, the graph model, its ablations and every baseline, and the
validation figures the quality gate compared. Written to eval.metrics, replacing the partition's rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import astuple, dataclass

import duckdb
import pyarrow as pa
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.evaluation.als import fit_als
from unirec_dagster.evaluation.evaluate import SliceResult, evaluate, slice_metrics
from unirec_dagster.evaluation.metrics import KS
from unirec_dagster.evaluation.served import evaluate_served
from unirec_dagster.evaluation.split import HoldoutPairs, load_holdout
from unirec_dagster.features import checkpoint_text_view
from unirec_dagster.history import load_stats
from unirec_dagster.model.checkpoint import FINETUNED, FROM_SCRATCH, MF_ABLATION, Checkpoint, CheckpointStore
from unirec_dagster.model.trainer import Log
from unirec_dagster.ranking.baselines import ITEM_KNN, simple_baselines
from unirec_dagster.ranking.classic import CLASSIC
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.two_stage import TWO_STAGE, TwoStage
from unirec_dagster.serving.policy import served_policy
from unirec_dagster.warehouse import ensure_schema, rows, transaction

ABLATION_LABELS = {MF_ABLATION: "BPR-MF (the same trainer: no graph, no text, no pretraining)",
                   FROM_SCRATCH: "full model from scratch (no pretraining)"}


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


SERVED = "served table (serving.recommendations)"


def baseline_label(name: str) -> str:
    """A simple baseline's model name in eval.metrics: the classic peers say they were tuned."""
    return f"{name} (tuned)" if name in CLASSIC else name


@dataclass
class EvaluationResult:
    rows: list[MetricRow]
    model_version: str
    test_users: int          # evaluated users of the test window (0 when the warehouse has no day after it)
    unserved_users: int      # of them, users without a row in the served partition (they score zero)
    peer: str | None = None  # the strongest simple baseline on validation (the figure to beat)
    newest_evaluated: dt.date | None = None  # without a test window: the newest partition that has one

    def value(self, model: str, metric: str = "recall", k: int | None = 20) -> float | None:
        """A test figure over all evaluated users."""
        return next((r.value for r in self.rows if r.model == model and r.split == "test" and r.slice == "all"
                     and r.metric == metric and r.k == k), None)



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
    out += validation_rows(checkpoint)
    text = checkpoint_text_view(conn, checkpoint)
    policy = served_policy(conn, spec, checkpoint, run_date, text)
    served = policy.blend
    holdout = load_holdout(conn, spec, served.signals.data, window_end)
    unserved = 0
    if len(holdout.users):
        served_results, unserved = evaluate_served(conn, run_date, holdout, served.signals.data)
        out += metric_rows(SERVED, "test", cutoff, served_results)
        if log:
            log(f"served table: {len(holdout.users):,} evaluated users, {unserved:,} without a row; Recall@20 "
                f"{served_results[0].metrics['recall@20']:.4f}, NDCG@20 {served_results[0].metrics['ndcg@20']:.4f}")
        out += metric_rows(f"{checkpoint.version}: {policy.name} (in process)", "test", cutoff,
                           evaluate_policy(policy.ranking, holdout))
        out += metric_rows(f"{checkpoint.version}: logit blend", "test", cutoff, evaluate(served, holdout))
        out += metric_rows(f"{checkpoint.version}: graph model only", "test", cutoff,
                           evaluate(Scorer(served.signals, {"model": 1.0}, served.embeddings), holdout))
        # the policy's own signals: EASE^R and RP3beta are fitted already
        stats = load_stats(conn, spec, policy.signals.data)
        for name, weights in (simple_baselines(policy.classic, bool(stats.segments)) | ITEM_KNN).items():
            out += metric_rows(baseline_label(name), "test", cutoff,
                               evaluate(Scorer(policy.signals, weights, stats=stats), holdout))
        out += metric_rows("ALS (64 factors)", "test", cutoff,
                           evaluate(Scorer(served.signals, {"model": 1.0}, fit_als(served.signals.data)), holdout))
        for kind, label in ABLATION_LABELS.items():
            ablation = store.latest(kind, run_date, partition_from=run_date)
            if ablation is not None:
                out += metric_rows(label, "test", cutoff, evaluate_policy(
                    served_policy(conn, spec, ablation, run_date, text).ranking, holdout))
    write_metrics(conn, run_date, out, run_id)
    newest = None
    if not len(holdout.users):
        newest = rows(conn, "SELECT max(partition_date) FROM eval.metrics WHERE split = 'test'")[0][0]
        if log:
            log(f"no events after {cutoff} in the warehouse yet: validation metrics only"
                + (f"; the newest partition with test figures is {newest}" if newest else ""))
    # the strongest simple baseline on validation, as the gate judged it (a classic peer before it named one)
    gate = checkpoint.manifest.get("gate") or {}
    strongest = gate.get("baseline") if "baselines" in gate else policy.classic.strongest if policy.classic else None
    peer = baseline_label(strongest) if strongest else None
    return EvaluationResult(out, checkpoint.version, len(holdout.users), unserved, peer, newest)


def validation_rows(checkpoint: Checkpoint) -> list[MetricRow]:
    """The validation figures the quality gate compared: the ranker's out-of-fold ones and every simple
    baseline's (the tuned classic peers' only, for checkpoints from before the gate compared more)."""
    m = checkpoint.manifest
    if "classic" not in m:
        return []
    at, users = dt.date.fromisoformat(m["validation_cutoff"]), m["validation"]["users"]
    compared = m["gate"].get("baselines") or m["classic"]["validation"]
    figures = {baseline_label(name): metrics for name, metrics in compared.items()}
    if m.get("ranking"):
        figures[f"{TWO_STAGE} (out of fold)"] = m["ranking"]["validation"]
    return [MetricRow(model, at, "validation", "all", metric.split("@")[0], 20, value, users)
            for model, metrics in figures.items() for metric, value in metrics.items()]


def evaluate_policy(ranking: Scorer | TwoStage, holdout: HoldoutPairs) -> list[SliceResult]:
    """A served policy's figures in process, on every slice."""
    if isinstance(ranking, Scorer):
        return evaluate(ranking, holdout)
    top = torch.cat([block.items.masked_fill(~torch.isfinite(block.scores), -1)
                     for block in ranking.top_k(holdout.users, max(KS))]) if len(holdout.users) else \
        torch.empty((0, max(KS)), dtype=torch.long)
    return slice_metrics(top, holdout, ranking.inputs.signals.data)


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
