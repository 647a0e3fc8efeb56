"""What is known at a cutoff: the training pairs and popularity (`data`), and the per-item, per-user
and per-segment statistics the ranker reads (`stats`)."""

from unirec_dagster.history.data import TrainingData, as_timestamp, entity_join, load_training, tensor_column

__all__ = ["TrainingData", "as_timestamp", "entity_join", "load_training", "tensor_column"]
