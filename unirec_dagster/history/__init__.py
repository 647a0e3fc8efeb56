"""What is known at a cutoff: the training pairs and popularity (`data`), and the per-item, per-user
and per-segment statistics the ranker reads (`stats`)."""

from unirec_dagster.history.data import (
    TrainingData,
    as_timestamp,
    entity_join,
    load_training,
    never_recommended,
    tensor_column,
    unsold_until,
)
from unirec_dagster.history.stats import CutoffStats, load_stats

__all__ = ["CutoffStats", "TrainingData", "as_timestamp", "entity_join", "load_stats", "load_training",
           "never_recommended", "tensor_column", "unsold_until"]
