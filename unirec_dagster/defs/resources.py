"""Resources: the DuckDB warehouse file (UNIREC_DUCKDB_PATH, default data/warehouse.duckdb;
memory limit UNIREC_DUCKDB_MEMORY_LIMIT, default 3GB)."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster import settings
from unirec_dagster.warehouse.db import connection_config

# Every asset that writes the warehouse runs in this pool; dagster.yaml limits it to one slot,
# because only one process may hold a DuckDB file open for writing.
WAREHOUSE_POOL = "duckdb_warehouse"


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"duckdb": DuckDBResource(database=str(settings.duckdb_path()),
                                                              connection_config=connection_config())})
