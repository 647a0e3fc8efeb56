"""What serves a run date, rebuilt from a fine-tuned checkpoint: the checkpoint itself (its own
partition's, never silently an older one), and the policy its quality gate chose (the two-stage
ranker or a simple baseline) with the graph model's blend beside it, over what is known at the
end of that day. The serving assets and the evaluation both read the served policy from here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.features import checkpoint_text_view
from unirec_dagster.graph import KnowledgeGraph, load_graph
from unirec_dagster.history import load_stats, load_training, never_recommended
from unirec_dagster.model.checkpoint import FINETUNED, Checkpoint, CheckpointStore
from unirec_dagster.model.encoder import TextView
from unirec_dagster.ranking.candidates import CandidateConfig
from unirec_dagster.ranking.classic import TunedClassic
from unirec_dagster.ranking.inputs import cutoff_inputs
from unirec_dagster.ranking.ranker import NewItemPlacement, Ranker
from unirec_dagster.ranking.scoring import STATS_FEATURES, Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.two_stage import PLACEMENT_FILE, RANKER_FILE, TWO_STAGE, TwoStage


def served_checkpoint(store: CheckpointStore, run_date: dt.date, model_partition: dt.date | None = None) -> Checkpoint:
    """The fine-tuned checkpoint that serves run_date: its own partition's, never silently an older
    one (a deleted or never-built day fails with what to do). `model_partition` names an older
    partition's model explicitly; the caller reports it (the serving assets warn)."""
    wanted = model_partition or run_date
    if wanted > run_date:
        raise ValueError(f"the model of {wanted} knows data after {run_date}: it cannot serve that day")
    found = store.latest(FINETUNED, wanted, partition_from=wanted, where=lambda m: m.get("promoted", True))
    if found is None:
        raise LookupError(f"no fine-tuned model of partition {wanted} in {store.root}: materialize "
                          f"finetuned_recommender for {wanted} first. Serving never falls back to an older model "
                          "by itself; to serve one on purpose, set model_partition in the run config.")
    return found


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


@dataclass
class ServedPolicy:
    """What a fine-tuned checkpoint serves at a run date: `ranking` is the two-stage ranker or the
    simple baseline the quality gate chose (`name` says which); `blend` is the graph model's
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
        # the gate records the served baseline's weights; before it did, only a classic peer could serve
        weights = m["gate"].get("weights") or classic.weights(m["policy"])
        stats = load_stats(conn, spec, signals.data) if set(weights) & set(STATS_FEATURES) else None
        return ServedPolicy(m["policy"], Scorer(signals, weights, stats=stats), served.scorer, served.graph, classic)
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
