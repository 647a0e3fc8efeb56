"""The knowledge graph: snapshot builds in DuckDB and the tensor loader for PyTorch."""

from unirec_dagster.graph.build import SnapshotStats, build_partition, build_snapshot
from unirec_dagster.graph.loader import KnowledgeGraph, entity_fingerprint, latest_snapshot, load_graph, snapshot_params
from unirec_dagster.graph.params import KGParams

__all__ = ["KGParams", "KnowledgeGraph", "SnapshotStats", "build_partition", "build_snapshot", "entity_fingerprint",
           "latest_snapshot", "load_graph", "snapshot_params"]
