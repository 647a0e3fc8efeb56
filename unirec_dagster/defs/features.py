"""The text view of items: sentence embeddings in features.text_embeddings, only new texts encoded."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster.defs.ingest import raw_items
from unirec_dagster.defs.resources import OWNERS, WAREHOUSE_POOL, ComputeResource, TextModelResource, warehouse_table
from unirec_dagster.features import refresh_text_embeddings
from unirec_dagster.model.device import choose_device


class TextEmbeddingConfig(dg.Config):
    batch_size: int = 256


@dg.asset(group_name="features", owners=OWNERS, kinds={"duckdb", "pytorch"},
          metadata=warehouse_table("features.item_texts"), deps=[raw_items], pool=WAREHOUSE_POOL, code_version="1",
          description="Sentence embeddings of item title + description, keyed by a hash of the text.")
def item_text_embeddings(context: dg.AssetExecutionContext, config: TextEmbeddingConfig, duckdb: DuckDBResource,
                         text_model: TextModelResource, compute: ComputeResource):
    encoder = text_model.encoder(choose_device(compute.device))
    with duckdb.get_connection() as conn:
        stats = refresh_text_embeddings(conn, encoder, config.batch_size, log=context.log.info)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": stats.items, "encoded": stats.encoded, "reused": stats.reused, "model": stats.model,
        "dim": stats.dim, "seconds": stats.seconds,
        "texts_per_second": stats.encoded / stats.seconds if stats.seconds else 0.0})
