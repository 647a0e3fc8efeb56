"""Fit a recommender at a cutoff C, with everything chosen before C:

1. validation cutoff V = C - validation_days: train on positives before V over the KG as of
   V - 1 day, early-stop on Recall@20 of the window [V, C);
2. fit the blend weights on that same validation window;
3. retrain on positives before C over the KG as of C - 1 day for the chosen number of epochs.

The test window [C, ...) is never looked at here. The validation and final splits are loaded
once by the caller and shared by every variant trained that night (the model, its ablations).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.evaluation.evaluate import evaluate
from unirec_dagster.evaluation.split import HoldoutPairs, load_holdout
from unirec_dagster.graph import KnowledgeGraph, load_graph
from unirec_dagster.history import TrainingData, load_training
from unirec_dagster.model.config import FinetuneConfig
from unirec_dagster.model.encoder import GraphEncoder, TextView
from unirec_dagster.model.finetune import finetune, recency_weights
from unirec_dagster.model.trainer import Log, TrainResult
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.training.blend import fit_blend


@dataclass
class CutoffData:
    """What a model may know at a cutoff: the training data, its signals and the KG of the day before."""

    data: TrainingData
    signals: Signals
    graph: KnowledgeGraph

    @property
    def cutoff(self) -> dt.date:
        return self.data.cutoff


@dataclass
class ValidationSplit:
    """The validation fit's inputs: what is known at V, and the window [V, C) it is judged on."""

    known: CutoffData
    holdout: HoldoutPairs
    cutoff: dt.date                              # C, the end of the window


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
    world_size: int = 1   # processes that trained it
    validation_embeddings: torch.Tensor | None = None  # the validation fit's, for the ranker's examples
    validation_model: GraphEncoder | None = None       # the validation fit's model (re-embeds simulated new items)

    def scorer(self, blended: bool = True) -> Scorer:
        return Scorer(self.train.signals, self.blend if blended else {"model": 1.0}, self.embeddings)


def cutoff_data(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, cutoff: dt.date,
                catalog_until: dt.date | None = None) -> CutoffData:
    """Training data before `cutoff` and the KG snapshot of the day before (it must be built); with
    `catalog_until`, the entities of the snapshot of the day before that too."""
    data = load_training(conn, spec, cutoff, catalog_until=catalog_until)
    day_before = dt.timedelta(days=1)
    graph = load_graph(conn, cutoff - day_before, catalog_until - day_before if catalog_until else None)
    return CutoffData(data, Signals(data), graph)


def validation_split(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, cutoff: dt.date,
                     validation_days: int) -> ValidationSplit:
    # Items first sold inside the window are catalog items at V: the ranker learns where new items belong.
    known = cutoff_data(conn, spec, cutoff - dt.timedelta(days=validation_days), catalog_until=cutoff)
    return ValidationSplit(known, load_holdout(conn, spec, known.data, cutoff), cutoff)


def recall_at_20(scorer: Scorer, holdout: HoldoutPairs) -> dict[str, float]:
    return evaluate(scorer, holdout, slices=False)[0].metrics


def negative_candidates(data: TrainingData) -> torch.Tensor:
    """Entity ids of the items negatives are drawn from: those with a history. An item only listed
    in the catalog would otherwise only ever be a negative, and be taught to score below everything."""
    return data.items[data.interacted]


def train_variant(split: CutoffData, text: TextView | None, config: FinetuneConfig,
                  initial_state: dict[str, torch.Tensor] | None, holdout: HoldoutPairs | None = None,
                  epochs: int | None = None, log: Log | None = None) -> TrainResult:
    """Fine-tune one model variant on the positives before the split's cutoff; early-stopped on
    `holdout` when given, else run for `epochs`."""
    data = split.data
    validate = None
    if holdout is not None:
        def validate(emb: torch.Tensor) -> float:
            return recall_at_20(Scorer(split.signals, {"model": 1.0}, emb), holdout)["recall@20"]
    return finetune(split.graph, text, config, data.train_users, data.items[data.train_items],
                    recency_weights(data.train_last_days, config.half_life_days), negative_candidates(data),
                    initial_state,
                    validate=validate, epochs=epochs, log=log)


VariantTrainer = Callable[..., TrainResult]  # train_variant's signature: in process, or workers it launches


def fit_recommender(validation: ValidationSplit, final: CutoffData, config: FinetuneConfig, text: TextView | None,
                    initial_state: dict[str, torch.Tensor] | None, blend: bool = True,
                    log: Log | None = None, trainer: VariantTrainer = train_variant) -> FittedRecommender:
    """`trainer` trains each variant: `train_variant` here, or a launcher of distributed workers."""
    say = log or (lambda _: None)
    known, holdout = validation.known, validation.holdout
    say(f"validation: train before {known.cutoff}, window {known.cutoff}..{final.cutoff - dt.timedelta(days=1)}"
        f" with {len(holdout.users):,} users")
    val_run = trainer(known, text, config, initial_state, holdout, log=log)
    val_emb = val_run.model.embed_graph(known.graph, text)
    model_only = recall_at_20(Scorer(known.signals, {"model": 1.0}, val_emb), holdout)
    weights = fit_blend(Scorer(known.signals, {}, val_emb), holdout) if blend else {"model": 1.0}
    blended = recall_at_20(Scorer(known.signals, weights, val_emb), holdout)
    say(f"validation Recall@20: model {model_only['recall@20']:.4f} at epoch {val_run.best_epoch},"
        f" blend {blended['recall@20']:.4f} with {weights}")
    final_run = trainer(final, text, config, initial_state, epochs=val_run.best_epoch, log=log)
    return FittedRecommender(
        final.cutoff, final_run.model, final_run.model.embed_graph(final.graph, text), weights, final,
        val_run.best_epoch,
        {"model_recall@20": model_only["recall@20"], "model_ndcg@20": model_only["ndcg@20"],
         "recall@20": blended["recall@20"], "ndcg@20": blended["ndcg@20"], "users": len(holdout.users)},
        val_run.history + [{"final_epochs": final_run.best_epoch}], val_run.seconds + final_run.seconds,
        final_run.world_size, val_emb, val_run.model)
