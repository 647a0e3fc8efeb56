"""Features computed from the warehouse for the model: item text embeddings."""

from unirec_dagster.features.text import TextEmbeddingStats, load_item_text_vectors, refresh_text_embeddings

__all__ = ["TextEmbeddingStats", "load_item_text_vectors", "refresh_text_embeddings"]
