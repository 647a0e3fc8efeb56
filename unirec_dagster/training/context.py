"""What the training, evaluation and serving steps share: as-of KG snapshots, the text view,
and a served scorer rebuilt from a fine-tuned checkpoint."""

from __future__ import annotations

import datetime as dt
from functools import partial

import duckdb

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.evaluation.split import load_training
from unirec_dagster.features import load_item_text_vectors
from unirec_dagster.graph import KGParams, KnowledgeGraph, build_snapshot, load_graph
from unirec_dagster.model.checkpoint import Checkpoint
from unirec_dagster.model.encoder import TextView
from unirec_dagster.warehouse import rows


def graph_as_of(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, day: dt.date,
                params: KGParams | None = None) -> KnowledgeGraph:
    """The KG snapshot of `day`, built first when the warehouse does not hold it (an as-of build,
    so it never sees later events)."""
    if not rows(conn, "SELECT count(*) FROM kg.snapshots WHERE snapshot_date = $d", {"d": day})[0][0]:
        build_snapshot(conn, spec, day, params)
    return load_graph(conn, day)


def graph_loader(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, params: KGParams | None = None):
    cache: dict[dt.date, KnowledgeGraph] = {}

    def graph_at(day: dt.date) -> KnowledgeGraph:
        if day not in cache:
            cache[day] = graph_as_of(conn, spec, day, params)
        return cache[day]
    return graph_at


def text_view(conn: duckdb.DuckDBPyConnection) -> TextView | None:
    ids, vectors = load_item_text_vectors(conn)
    return TextView(ids, vectors) if len(ids) else None


def served_scorer(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, checkpoint: Checkpoint, run_date: dt.date,
                  graph_at=None, text: TextView | None = None) -> Scorer:
    """The blend of a fine-tuned checkpoint, with signals as of the end of `run_date`."""
    graph_at = graph_at or partial(graph_as_of, conn, spec)
    data = load_training(conn, spec, run_date + dt.timedelta(days=1))
    graph = graph_at(run_date)
    model = checkpoint.build_model(graph.num_entities, len(graph.relation_names))
    emb = model.embed_graph(graph, text if text is not None else text_view(conn))
    return Scorer(Signals(data), checkpoint.manifest["blend"], emb)
