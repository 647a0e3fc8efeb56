"""Item text embeddings in DuckDB, keyed by a hash of the text: only new or changed texts are encoded.

features.item_texts maps each item to the hash of its current text (title + description);
features.text_embeddings holds one vector per (hash, model), so renaming an item re-encodes it
and items sharing a text share a vector.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import torch

from unirec_dagster.model.checkpoint import Checkpoint
from unirec_dagster.model.encoder import TextView
from unirec_dagster.model.text_encoder import TextEncoder
from unirec_dagster.warehouse import ensure_schema, rows, transaction

ITEM_TEXT = "trim(coalesce(title, '') || ' ' || coalesce(description, ''))"


@dataclass
class TextEmbeddingStats:
    items: int
    encoded: int
    reused: int
    seconds: float
    model: str
    dim: int


def refresh_text_embeddings(conn: duckdb.DuckDBPyConnection, encoder: TextEncoder, batch_size: int = 256,
                            log: Callable[[str], None] | None = None) -> TextEmbeddingStats:
    started = time.perf_counter()
    ensure_schema(conn)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE current_item_texts AS
        SELECT item_id, {ITEM_TEXT} AS text, md5({ITEM_TEXT}) AS text_hash FROM raw.items
        WHERE {ITEM_TEXT} <> ''""")
    todo = rows(conn, """
        SELECT DISTINCT text_hash, text FROM current_item_texts
        WHERE text_hash NOT IN (SELECT text_hash FROM features.text_embeddings WHERE model = $m)
        ORDER BY text_hash""", {"m": encoder.name})
    vectors = encoder.encode([text for _, text in todo], batch_size=batch_size, log=log) if todo else None
    items, reused = rows(conn, """
        SELECT count(*), count(*) FILTER (WHERE text_hash IN (SELECT text_hash FROM features.text_embeddings
                                                              WHERE model = $m))
        FROM current_item_texts""", {"m": encoder.name})[0]
    with transaction(conn):
        if todo:
            new = pa.table({
                "text_hash": [h for h, _ in todo],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.numpy().reshape(-1)), encoder.dim),
            })
            conn.register("new_text_embeddings", new)
            conn.execute("INSERT INTO features.text_embeddings SELECT text_hash, $m, embedding::FLOAT[], now() "
                         "FROM new_text_embeddings", {"m": encoder.name})
            conn.unregister("new_text_embeddings")
        conn.execute("DELETE FROM features.item_texts")
        conn.execute("INSERT INTO features.item_texts SELECT item_id, text_hash, now() FROM current_item_texts")
    return TextEmbeddingStats(items, len(todo), reused, time.perf_counter() - started, encoder.name,
                              encoder.dim)


def load_item_text_vectors(conn: duckdb.DuckDBPyConnection, model: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(entity ids of items with a text vector, their vectors) for the items in kg.entities."""
    model = model or _only_model(conn)
    table = conn.sql("""
        SELECT e.entity_id, v.embedding FROM kg.entities e
        JOIN features.item_texts t ON e.entity_type = 'item' AND t.item_id = e.natural_key
        JOIN features.text_embeddings v ON v.text_hash = t.text_hash AND v.model = $m
        ORDER BY e.entity_id""", params={"m": model}).to_arrow_table()
    ids = torch.from_numpy(table.column("entity_id").to_numpy().astype(np.int64))
    if not len(ids):
        return ids, torch.empty((0, 0))
    flat = table.column("embedding").combine_chunks().flatten().to_numpy().astype(np.float32)
    return ids, torch.from_numpy(flat.reshape(len(ids), -1))


def text_view(conn: duckdb.DuckDBPyConnection, model: str | None = None) -> TextView | None:
    """The items' text vectors of `model` (None: the only model in the warehouse), as the encoder reads them."""
    ids, vectors = load_item_text_vectors(conn, model)
    return TextView(ids, vectors) if len(ids) else None


def checkpoint_text_view(conn: duckdb.DuckDBPyConnection, checkpoint: Checkpoint) -> TextView | None:
    """The text vectors of the model the checkpoint was trained with (older checkpoints name none)."""
    return text_view(conn, checkpoint.manifest.get("text_model"))


def _only_model(conn: duckdb.DuckDBPyConnection) -> str | None:
    models = [m for (m,) in rows(conn, "SELECT DISTINCT model FROM features.text_embeddings ORDER BY 1")]
    if len(models) > 1:
        raise ValueError(f"text embeddings of several models in the warehouse ({models}); name one")
    return models[0] if models else None
