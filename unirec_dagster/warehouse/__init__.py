"""The DuckDB warehouse: schema, connections and transactional writes."""

from unirec_dagster.warehouse.db import (
                                        Params,
                                        connect,
                                        quote_identifier,
                                        quote_path,
                                        rows,
                                        scalar,
                                        table_name,
                                        transaction,
)
from unirec_dagster.warehouse.schema import ensure_schema, warehouse_id

__all__ = ["Params", "connect", "ensure_schema", "quote_identifier", "quote_path", "rows", "scalar", "table_name",
           "transaction", "warehouse_id"]
