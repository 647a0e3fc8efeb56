"""The pipeline's model steps as plain functions (the Dagster assets call these; tests too):
pretraining, fine-tuning with its quality gate, and evaluation against the baselines."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import pyarrow as pa

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.evaluation.evaluate import evaluate
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.evaluation.split import load_holdout
from unirec_dagster.graph import KGParams, entity_fingerprint
from unirec_dagster.model.checkpoint import (check_compatible, latest_checkpoint, list_checkpoints, load_checkpoint,
                                             save_checkpoint)
from unirec_dagster.model.config import EncoderConfig, FinetuneConfig, PretrainConfig
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.training.context import graph_loader, served_scorer, text_view
from unirec_dagster.training.fit import cutoff_data, fit_recommender, validation_split
from unirec_dagster.warehouse import ensure_schema, rows, transaction

Log = Callable[[str], None]
PRETRAINED, FINETUNED = "pretrained", "finetuned"


def _fingerprint(conn: duckdb.DuckDBPyConnection) -> Callable[[int], str]:
    return lambda n: entity_fingerprint(conn, n)


def run_pretraining(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, config: PretrainConfig,
                    models_dir: Path, kg_params: KGParams | None = None, log: Log | None = None) -> Path:
    """Pretrain on the KG as of run_date - holdout_days; warm-start from the newest compatible
    pretrained checkpoint. Returns the new checkpoint's folder."""
    as_of = run_date - dt.timedelta(days=config.holdout_days)
    graph = graph_loader(conn, spec, kg_params)(as_of)
    text = text_view(conn) if config.encoder.use_text else None
    previous = latest_checkpoint(models_dir, PRETRAINED)
    state = None
    if previous is not None:
        check_compatible(previous, _fingerprint(conn))
        state = previous.state
        if log:
            log(f"warm start from {previous.version} ({previous.manifest['num_entities']:,} entities; "
                f"{graph.num_entities - previous.manifest['num_entities']:,} new)")
    result = pretrain(graph, text, config, spec.events.positive_event_type, state, log)
    return save_checkpoint(
        models_dir, PRETRAINED, result.model, as_of, graph.relation_names, entity_fingerprint(conn, graph.num_entities),
        config=config.model_dump(), parent=previous.version if previous else None, history=result.history,
        final_losses={k: v for k, v in result.history[-1].items() if k != "epoch"}, seconds=result.seconds,
        edges_per_second=result.examples_per_second, device=result.device,
        relation_weights=result.model.relation_weights(graph.relation_names))


@dataclass
class GateResult:
    passed: bool
    model_recall: float
    recent_popular_recall: float
    mf_recall: float

    @property
    def reason(self) -> str:
        verdict = "beats" if self.passed else "does not beat"
        return (f"validation Recall@20 {self.model_recall:.4f} {verdict} RecentPopular {self.recent_popular_recall:.4f}"
                f" and the MF ablation {self.mf_recall:.4f}")


def mf_config(config: FinetuneConfig) -> FinetuneConfig:
    """The ablation: the same trainer with no graph, no text and no pretraining."""
    return config.model_copy(update={"encoder": EncoderConfig(dim=config.encoder.dim, layers=0, use_graph=False,
                                                              use_text=False)})


def run_finetuning(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, config: FinetuneConfig,
                   models_dir: Path, kg_params: KGParams | None = None,
                   log: Log | None = None) -> tuple[Path, GateResult]:
    """Fine-tune for serving on run_date (cutoff = the next day) and judge it against
    RecentPopular and the MF ablation on the validation window."""
    cutoff = run_date + dt.timedelta(days=1)
    validation_cutoff = cutoff - dt.timedelta(days=config.validation_days)
    graph_at = graph_loader(conn, spec, kg_params)
    text = text_view(conn) if config.encoder.use_text else None
    pretrained = latest_checkpoint(models_dir, PRETRAINED, validation_cutoff - dt.timedelta(days=1))
    if pretrained is None:
        raise LookupError(f"no pretrained checkpoint with a KG snapshot before {validation_cutoff} in {models_dir}; "
                          "materialize pretrained_encoder for this date first")
    check_compatible(pretrained, _fingerprint(conn))
    validation = validation_split(conn, spec, validation_cutoff, cutoff, graph_at)
    fitted = fit_recommender(conn, spec, cutoff, config, graph_at, text, pretrained.state, validation, log=log)
    val_split, val_holdout = validation
    recent = evaluate(Scorer(val_split.signals, {"recent_popularity": 1.0}), val_holdout, slices=False)[0].metrics
    mf = fit_recommender(conn, spec, cutoff, mf_config(config), graph_at, None, None, validation, blend=False, log=log)
    gate = GateResult(fitted.validation["recall@20"] > max(recent["recall@20"], mf.validation["recall@20"]),
                      fitted.validation["recall@20"], recent["recall@20"], mf.validation["recall@20"])
    graph = fitted.train.graph
    path = save_checkpoint(
        models_dir, FINETUNED, fitted.model, run_date, graph.relation_names,
        entity_fingerprint(conn, graph.num_entities), config=config.model_dump(), parent=pretrained.version,
        cutoff=cutoff.isoformat(), validation_cutoff=validation_cutoff.isoformat(), blend=fitted.blend,
        best_epoch=fitted.best_epoch, validation=fitted.validation, history=fitted.history,
        seconds=fitted.seconds, device=str(next(fitted.model.parameters()).device),
        gate={"passed": gate.passed, "reason": gate.reason, "recent_popular_recall@20": gate.recent_popular_recall,
              "mf_recall@20": gate.mf_recall}, promoted=gate.passed)
    return path, gate


def promoted_checkpoint(models_dir: Path, run_date: dt.date):
    """The newest fine-tuned checkpoint that passed the gate and knows nothing after run_date."""
    usable = [m for m in list_checkpoints(models_dir, FINETUNED)
              if m.get("promoted") and dt.date.fromisoformat(m["kg_snapshot"]) <= run_date]
    if not usable:
        raise LookupError(f"no promoted fine-tuned model for {run_date} in {models_dir}: materialize "
                          "finetuned_recommender first (its quality gate must pass)")
    return load_checkpoint(Path(max(usable, key=lambda m: (m["kg_snapshot"], m["created_at"]))["path"]))


BASELINES = {"MostPopular": {"popularity": 1.0}, "RecentPopular": {"recent_popularity": 1.0},
             "ItemKNN": {"co_purchase": 1.0}}


def run_evaluation(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, checkpoint_path: Path,
                   window_days: int = 14, ablations: bool = True, run_id: str | None = None,
                   kg_params: KGParams | None = None, log: Log | None = None) -> list[tuple]:
    """eval.metrics for the fine-tuned model and every baseline on the test window after the
    cutoff (when the warehouse has it) and on the validation window. Returns the rows written."""
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint.snapshot_date > run_date:
        raise ValueError(f"{checkpoint.version} was trained on the KG of {checkpoint.snapshot_date}, after {run_date}: "
                         "evaluating it there would leak the test window")
    config = FinetuneConfig(**checkpoint.manifest["config"])
    cutoff = run_date + dt.timedelta(days=1)
    window_end = cutoff + dt.timedelta(days=window_days)
    graph_at = graph_loader(conn, spec, kg_params)
    text = text_view(conn) if config.encoder.use_text else None
    out: list[tuple] = []

    def record(model: str, split: str, at: dt.date, results) -> None:
        for r in results:
            for name, value in r.metrics.items():
                metric, _, k = name.partition("@")
                out.append((model, at, split, r.slice, metric, int(k) if k else None, value, r.users))

    validation_cutoff = dt.date.fromisoformat(checkpoint.manifest["validation_cutoff"])
    val = checkpoint.manifest["validation"]
    for metric in ("recall@20", "ndcg@20"):
        out.append((checkpoint.version, validation_cutoff, "validation", "all", metric.split("@")[0], 20, val[metric],
                    val["users"]))
    served = served_scorer(conn, spec, checkpoint, run_date, graph_at, text)
    holdout = load_holdout(conn, spec, served.signals.data, window_end)
    if len(holdout.users):
        record(checkpoint.version, "test", cutoff, evaluate(served, holdout))
        record(f"{checkpoint.version} (model only, no blend)", "test", cutoff,
               evaluate(Scorer(served.signals, {"model": 1.0}, served.embeddings), holdout))
        for name, weights in BASELINES.items():
            record(name, "test", cutoff, evaluate(Scorer(served.signals, weights), holdout))
        if ablations:
            validation = validation_split(conn, spec, cutoff - dt.timedelta(days=config.validation_days), cutoff,
                                          graph_at)
            variants = {"MF ablation (no graph, no pretraining)": (mf_config(config), None, False),
                        "full model from scratch (no pretraining), blended": (config, text, True)}
            for name, (variant_config, variant_text, blend) in variants.items():
                fitted = fit_recommender(conn, spec, cutoff, variant_config, graph_at, variant_text, None, validation,
                                         blend=blend, log=log)
                record(name, "test", cutoff, evaluate(fitted.scorer(blend), holdout))
                if blend:
                    record(name.replace("blended", "model only"), "test", cutoff,
                           evaluate(fitted.scorer(False), holdout))
    elif log:
        log(f"no events after {cutoff} in the warehouse yet: validation metrics only")
    ensure_schema(conn)
    with transaction(conn):
        conn.execute("DELETE FROM eval.metrics WHERE (split = 'test' AND cutoff = $c) OR "
                     "(split = 'validation' AND model = $m)", {"c": cutoff, "m": checkpoint.version})
        columns = list(zip(*out)) if out else [[]] * 8
        conn.register("new_metrics", pa.table(dict(zip(
            ["model", "cutoff", "split", "slice", "metric", "k", "value", "users"], [list(c) for c in columns]))))
        conn.execute("INSERT INTO eval.metrics SELECT model, cutoff, split, slice, metric, k, value, users, $run, now() "
                     "FROM new_metrics", {"run": run_id})
        conn.unregister("new_metrics")
    return out


def comparison_table(rows_: list[tuple], split: str = "test", slice_: str = "all") -> str:
    """Markdown: one line per model, Recall/NDCG/HitRate@20, MRR, coverage@20, users."""
    table: dict[str, dict[str, float]] = {}
    users: dict[str, int] = {}
    for model, _, s, sl, metric, k, value, n in rows_:
        if s == split and sl == slice_:
            table.setdefault(model, {})[f"{metric}@{k}" if k else metric] = value
            users[model] = n
    lines = ["| model | Recall@20 | NDCG@20 | HitRate@20 | MRR | coverage@20 | users |", "|---|---|---|---|---|---|---|"]
    for model, m in sorted(table.items(), key=lambda kv: -kv[1].get("recall@20", 0)):
        cells = [f"{m[c]:.4f}" if c in m else "" for c in ("recall@20", "ndcg@20", "hitrate@20", "mrr", "coverage@20")]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {users[model]} |")
    return "\n".join(lines)
