"""What the training, evaluation and serving steps share: the text view, the ranking stages' inputs
at a cutoff, and the served policy rebuilt from a fine-tuned checkpoint."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.features import load_item_text_vectors
from unirec_dagster.graph import KnowledgeGraph, load_graph
from unirec_dagster.history import TrainingData, load_stats, load_training, never_recommended
from unirec_dagster.model.checkpoint import Checkpoint
from unirec_dagster.model.encoder import TextView
from unirec_dagster.ranking.candidates import CandidateConfig, CutoffInputs
from unirec_dagster.ranking.classic import ClassicParams
from unirec_dagster.ranking.content import ItemContent
from unirec_dagster.ranking.ranker import NewItemPlacement, Ranker
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.two_stage import TwoStage
from unirec_dagster.training.classic import TunedClassic
from unirec_dagster.training.ranking import PLACEMENT_FILE, RANKER_FILE, TWO_STAGE


def text_view(conn: duckdb.DuckDBPyConnection, model: str | None = None) -> TextView | None:
    """The items' text vectors of `model` (None: the only model in the warehouse)."""
    ids, vectors = load_item_text_vectors(conn, model)
    return TextView(ids, vectors) if len(ids) else None


def checkpoint_text_view(conn: duckdb.DuckDBPyConnection, checkpoint: Checkpoint) -> TextView | None:
    """The text vectors of the model the checkpoint was trained with (older checkpoints name none)."""
    return text_view(conn, checkpoint.manifest.get("text_model"))


@dataclass
class ServedModel:
    scorer: Scorer
    graph: KnowledgeGraph


def served_model(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, checkpoint: Checkpoint, run_date: dt.date,
                 text: TextView | None = None) -> ServedModel:
    """The blend of a fine-tuned checkpoint with signals as of the end of `run_date`, and that day's KG."""
    data = load_training(conn, spec, run_date + dt.timedelta(days=1))
    graph = load_graph(conn, run_date)
    model = checkpoint.build_model(graph.num_entities, len(graph.relation_names))
    emb = model.embed_graph(graph, text if text is not None else checkpoint_text_view(conn, checkpoint))
    return ServedModel(Scorer(Signals(data), checkpoint.manifest["blend"], emb), graph)


def cutoff_inputs(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, signals: Signals, graph: KnowledgeGraph | None,
                  embeddings: torch.Tensor | None, text: TextView | None, classic: ClassicParams) -> CutoffInputs:
    """What the two ranking stages read at the signals' cutoff: the classic peers with their tuned
    parameters, the history statistics, the items' text and KG attributes (None: without them), the
    graph model's embeddings (None: without them)."""
    data: TrainingData = signals.data
    content = ItemContent(data.items, text.ids if text is not None else None,
                          text.vectors if text is not None else None, graph)
    return CutoffInputs(signals.with_classic(classic), load_stats(conn, spec, data), content, embeddings)


@dataclass
class ServedPolicy:
    """What a fine-tuned checkpoint serves at a run date: `ranking` is the two-stage ranker or the
    tuned classic peer the quality gate chose (`name` says which); `blend` is the graph model's
    logit blend over the same signals (a baseline row, and what checkpoints before the ranker served);
    `classic` the tuned peers (None before them), whose fitted weights `signals` holds."""

    name: str
    ranking: Scorer | TwoStage
    blend: Scorer
    graph: KnowledgeGraph
    classic: TunedClassic | None = None

    @property
    def signals(self) -> Signals:
        """The signals at the run date, with the tuned peers' parameters (EASE^R fitted once for all users)."""
        return self.ranking.inputs.signals if isinstance(self.ranking, TwoStage) else self.ranking.signals


def served_policy(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, checkpoint: Checkpoint, run_date: dt.date,
                  text: TextView | None = None) -> ServedPolicy:
    """The checkpoint's served policy with what is known at the end of `run_date`."""
    m = checkpoint.manifest
    text = text if text is not None else checkpoint_text_view(conn, checkpoint)
    served = served_model(conn, spec, checkpoint, run_date, text)
    if "policy" not in m:      # a checkpoint from before the ranker: it served its blend
        return ServedPolicy("blend", served.scorer, served.scorer, served.graph)
    classic = TunedClassic.from_manifest(m["classic"])
    signals = served.scorer.signals.with_classic(classic.params)
    if m["policy"] != TWO_STAGE:
        return ServedPolicy(m["policy"], Scorer(signals, classic.weights(m["policy"])), served.scorer, served.graph,
                            classic)
    about = m["ranking"]
    ranker = Ranker.from_text(checkpoint.read_text(RANKER_FILE), about["rounds"], about["cv_ndcg"])
    uses_text = m["config"]["encoder"]["use_text"]
    inputs = cutoff_inputs(conn, spec, signals, served.graph if about["use_attributes"] else None,
                           served.scorer.embeddings if about["use_model"] else None, text if uses_text else None,
                           classic.params)
    placed = about.get("placement")  # absent before new-item placement, None when the window taught too little
    placement = (NewItemPlacement.from_text(checkpoint.read_text(PLACEMENT_FILE), placed["rounds"], placed["scale"],
                                            placed["shift"], placed["every"]) if placed else None)
    stage = TwoStage(inputs, CandidateConfig(**about["candidates"]), ranker,
                     never_recommended(conn, spec, signals.data.items), placement)
    return ServedPolicy(TWO_STAGE, stage, served.scorer, served.graph, classic)
