"""Features computed from the warehouse for the model: item text embeddings."""

from unirec_dagster.features.text import (
    TextEmbeddingStats,
    checkpoint_text_view,
    load_item_text_vectors,
    refresh_text_embeddings,
    text_view,
)

__all__ = ["TextEmbeddingStats", "checkpoint_text_view", "load_item_text_vectors", "refresh_text_embeddings",
           "text_view"]
