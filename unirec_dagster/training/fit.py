"""Fit a recommender at a cutoff C, with everything chosen before C:

1. validation cutoff V = C - validation_days: train on positives before V over the KG as of
   V - 1 day, early-stop on Recall@20 of the window [V, C);
2. fit the blend weights on that same validation window;
3. retrain on positives before C over the KG as of C - 1 day for the chosen number of epochs.

The test window [C, ...) is never looked at here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable

import duckdb
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.evaluation.evaluate import evaluate
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.evaluation.split import HoldoutPairs, TrainingData, load_holdout, load_training
from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import FinetuneConfig
from unirec_dagster.model.encoder import GraphEncoder, TextView
from unirec_dagster.model.finetune import finetune, recency_weights
from unirec_dagster.model.trainer import TrainResult
from unirec_dagster.training.blend import fit_blend

GraphAt = Callable[[dt.date], KnowledgeGraph]  # as-of day -> the KG snapshot of that day


@dataclass
class CutoffData:
    data: TrainingData
    signals: Signals
    graph: KnowledgeGraph


@dataclass
class FittedRecommender:
    cutoff: dt.date
    model: GraphEncoder
    embeddings: torch.Tensor
    blend: dict[str, float]
    train: CutoffData
    best_epoch: int
    validation: dict[str, float]                 # the model's and the blend's validation Recall@20 etc.
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def scorer(self, blended: bool = True) -> Scorer:
        return Scorer(self.train.signals, self.blend if blended else {"model": 1.0}, self.embeddings)


def cutoff_data(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, cutoff: dt.date, graph_at: GraphAt) -> CutoffData:
    data = load_training(conn, spec, cutoff)
    return CutoffData(data, Signals(data), graph_at(cutoff - dt.timedelta(days=1)))


def train_variant(split: CutoffData, text: TextView | None, config: FinetuneConfig,
                  initial_state: dict[str, torch.Tensor] | None, holdout: HoldoutPairs | None = None,
                  epochs: int | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Fine-tune one model variant on the positives before the split's cutoff; early-stopped on
    `holdout` when given, else run for `epochs`."""
    data = split.data
    validate = None
    if holdout is not None:
        def validate(emb: torch.Tensor) -> float:
            return evaluate(Scorer(split.signals, {"model": 1.0}, emb), holdout, slices=False)[0].metrics["recall@20"]
    return finetune(split.graph, text, config, data.train_users, data.items[data.train_items],
                    recency_weights(data.train_last_days, config.half_life_days), data.items, initial_state,
                    validate=validate, epochs=epochs, log=log)


def fit_recommender(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, cutoff: dt.date, config: FinetuneConfig,
                    graph_at: GraphAt, text: TextView | None, initial_state: dict[str, torch.Tensor] | None,
                    validation: tuple[CutoffData, HoldoutPairs] | None = None, blend: bool = True,
                    log: Callable[[str], None] | None = None) -> FittedRecommender:
    say = log or (lambda _: None)
    validation_cutoff = cutoff - dt.timedelta(days=config.validation_days)
    if validation is None:
        validation = validation_split(conn, spec, validation_cutoff, cutoff, graph_at)
    val_split, val_holdout = validation
    say(f"validation: train before {validation_cutoff}, window {validation_cutoff}..{cutoff - dt.timedelta(days=1)}"
        f" with {len(val_holdout.users):,} users")
    val_run = train_variant(val_split, text, config, initial_state, val_holdout, log=log)
    val_emb = val_run.model.embed_graph(val_split.graph, text)
    model_only = evaluate(Scorer(val_split.signals, {"model": 1.0}, val_emb), val_holdout, slices=False)[0].metrics
    weights = fit_blend(Scorer(val_split.signals, {}, val_emb), val_holdout) if blend else {"model": 1.0}
    blended = evaluate(Scorer(val_split.signals, weights, val_emb), val_holdout, slices=False)[0].metrics
    say(f"validation Recall@20: model {model_only['recall@20']:.4f} at epoch {val_run.best_epoch},"
        f" blend {blended['recall@20']:.4f} with {weights}")
    train_split = cutoff_data(conn, spec, cutoff, graph_at)
    final = train_variant(train_split, text, config, initial_state, epochs=val_run.best_epoch, log=log)
    return FittedRecommender(
        cutoff, final.model, final.model.embed_graph(train_split.graph, text), weights, train_split,
        val_run.best_epoch,
        {"model_recall@20": model_only["recall@20"], "model_ndcg@20": model_only["ndcg@20"],
         "recall@20": blended["recall@20"], "ndcg@20": blended["ndcg@20"], "users": len(val_holdout.users)},
        val_run.history + [{"final_epochs": final.best_epoch}], val_run.seconds + final.seconds)


def validation_split(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, validation_cutoff: dt.date,
                     cutoff: dt.date, graph_at: GraphAt) -> tuple[CutoffData, HoldoutPairs]:
    split = cutoff_data(conn, spec, validation_cutoff, graph_at)
    return split, load_holdout(conn, spec, split.data, cutoff)
