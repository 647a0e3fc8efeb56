"""What the two ranking stages read at a cutoff, loaded from the warehouse: the signals with the
tuned classic peers' parameters, the history statistics, the items' text and KG attributes, and the
graph model's embeddings. Training (at the validation cutoff) and serving (at the run date) both
build their inputs here, so the ranker is served what it learned from."""

from __future__ import annotations

import duckdb
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.history import CutoffStats, TrainingData, load_stats
from unirec_dagster.model.encoder import TextView
from unirec_dagster.ranking.candidates import CutoffInputs
from unirec_dagster.ranking.classic import ClassicParams
from unirec_dagster.ranking.content import ItemContent
from unirec_dagster.ranking.signals import Signals


def cutoff_inputs(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, signals: Signals, graph: KnowledgeGraph | None,
                  embeddings: torch.Tensor | None, text: TextView | None, classic: ClassicParams,
                  stats: CutoffStats | None = None) -> CutoffInputs:
    """The inputs at the signals' cutoff: the classic peers with their tuned parameters, the
    history statistics (`stats` when the caller loaded them already), the items' text and KG
    attributes (None: without them), the graph model's embeddings (None: without them)."""
    data: TrainingData = signals.data
    content = ItemContent(data.items, text.ids if text is not None else None,
                          text.vectors if text is not None else None, graph)
    return CutoffInputs(signals.with_classic(classic), stats if stats is not None else load_stats(conn, spec, data),
                        content, embeddings)
