"""What the training, evaluation and serving steps share: the text view and a served scorer
rebuilt from a fine-tuned checkpoint."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.history import load_training
from unirec_dagster.features import load_item_text_vectors
from unirec_dagster.graph import KnowledgeGraph, load_graph
from unirec_dagster.model.checkpoint import Checkpoint
from unirec_dagster.model.encoder import TextView
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals


def text_view(conn: duckdb.DuckDBPyConnection) -> TextView | None:
    ids, vectors = load_item_text_vectors(conn)
    return TextView(ids, vectors) if len(ids) else None


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
    emb = model.embed_graph(graph, text if text is not None else text_view(conn))
    return ServedModel(Scorer(Signals(data), checkpoint.manifest["blend"], emb), graph)
