"""DDL of the warehouse tables. Creating them is idempotent, so every writer may call ensure_schema."""

from __future__ import annotations

import duckdb

SCHEMAS = ("meta", "raw", "kg", "features", "serving", "eval")

# The columns raw.items and raw.users share after their own.
CATALOG_COLUMNS = """
        attributes MAP(VARCHAR, VARCHAR[]),
        first_seen TIMESTAMP,
        last_seen TIMESTAMP,
        event_count BIGINT,
        listed BOOLEAN,
        updated_at TIMESTAMP NOT NULL
"""

TABLES = {
    # One row: a random id given when the warehouse is created, so that what belongs to this
    # warehouse outside it (model checkpoints) is found again, and never another warehouse's.
    "meta.warehouse": """
        warehouse_id VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL
    """,
    "raw.events": """
        partition_date DATE NOT NULL,
        user_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        ts TIMESTAMP NOT NULL,
        event_type VARCHAR NOT NULL,
        value DOUBLE,
        session_id VARCHAR,
        price DOUBLE,
        context MAP(VARCHAR, VARCHAR),
        source_file VARCHAR NOT NULL,
        source_line BIGINT NOT NULL,
        run_id VARCHAR,
        ingested_at TIMESTAMP NOT NULL
    """,
    # partition_date is NULL for rows that cannot be placed on a day (no readable timestamp in a
    # glob layout) and for rows of attribute files (source_kind 'items' or 'users').
    "raw.rejected_events": """
        partition_date DATE,
        source_kind VARCHAR NOT NULL,
        source_file VARCHAR NOT NULL,
        source_line BIGINT NOT NULL,
        reason VARCHAR NOT NULL,
        detail VARCHAR,
        raw_content VARCHAR,
        run_id VARCHAR,
        rejected_at TIMESTAMP NOT NULL
    """,
    "raw.ingest_log": """
        partition_date DATE NOT NULL,
        source_file VARCHAR,
        file_found BOOLEAN NOT NULL,
        lines_read BIGINT NOT NULL,
        accepted BIGINT NOT NULL,
        rejected BIGINT NOT NULL,
        rejected_by_reason MAP(VARCHAR, BIGINT),
        blank_lines BIGINT NOT NULL,
        seconds DOUBLE NOT NULL,
        run_id VARCHAR,
        ingested_at TIMESTAMP NOT NULL
    """,
    # listed: in the item (user) file, a catalog entry known with or without events.
    "raw.items": "item_id VARCHAR PRIMARY KEY, title VARCHAR, description VARCHAR, price DOUBLE," + CATALOG_COLUMNS,
    "raw.users": "user_id VARCHAR PRIMARY KEY," + CATALOG_COLUMNS,
    # Entity ids are given once and never change: row i of every embedding table is entity i.
    "kg.entities": """
        entity_id BIGINT NOT NULL,
        entity_type VARCHAR NOT NULL,
        natural_key VARCHAR NOT NULL,
        display_name VARCHAR,
        first_seen TIMESTAMP,
        last_seen TIMESTAMP
    """,
    "kg.relations": """
        relation_id INTEGER NOT NULL,
        name VARCHAR NOT NULL,
        head_type VARCHAR NOT NULL,
        tail_type VARCHAR NOT NULL,
        source VARCHAR NOT NULL
    """,
    # One snapshot per as-of date: built from events before the end of snapshot_date only.
    "kg.triples": """
        snapshot_date DATE NOT NULL,
        head_id BIGINT NOT NULL,
        relation_id INTEGER NOT NULL,
        tail_id BIGINT NOT NULL,
        weight DOUBLE NOT NULL,
        event_count BIGINT,
        first_seen TIMESTAMP,
        last_seen TIMESTAMP
    """,
    "kg.snapshots": """
        snapshot_date DATE NOT NULL,
        entities BIGINT NOT NULL,
        triples BIGINT NOT NULL,
        seconds DOUBLE NOT NULL,
        params VARCHAR,
        run_id VARCHAR,
        built_at TIMESTAMP NOT NULL
    """,
    # One vector per distinct item text and encoder; items point at their current text's hash.
    "features.text_embeddings": """
        text_hash VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        embedding FLOAT[] NOT NULL,
        encoded_at TIMESTAMP NOT NULL
    """,
    "features.item_texts": """
        item_id VARCHAR NOT NULL,
        text_hash VARCHAR NOT NULL,
        updated_at TIMESTAMP NOT NULL
    """,
    # One partition per run date, replaced as a whole.
    "serving.recommendations": """
        partition_date DATE NOT NULL,
        user_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        rank INTEGER NOT NULL,
        score DOUBLE NOT NULL,
        reason VARCHAR,
        model_version VARCHAR NOT NULL,
        run_id VARCHAR,
        generated_at TIMESTAMP NOT NULL
    """,
    "serving.similar_items": """
        item_id VARCHAR NOT NULL,
        similar_item_id VARCHAR NOT NULL,
        rank INTEGER NOT NULL,
        score DOUBLE NOT NULL,
        model_version VARCHAR NOT NULL,
        run_date DATE NOT NULL,
        generated_at TIMESTAMP NOT NULL
    """,
    # split: "validation" (the window before the cutoff, used for choices) or "test" (after it, report only).
    # partition_date: the model_evaluation partition that wrote the row (its re-run replaces them).
    "eval.metrics": """
        partition_date DATE,
        model VARCHAR NOT NULL,
        cutoff DATE NOT NULL,
        split VARCHAR NOT NULL,
        slice VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        k INTEGER,
        value DOUBLE NOT NULL,
        users BIGINT NOT NULL,
        run_id VARCHAR,
        computed_at TIMESTAMP NOT NULL
    """,
}

VIEWS = {
    "serving.latest_recommendations": """
        SELECT * FROM serving.recommendations
        WHERE partition_date = (SELECT max(partition_date) FROM serving.recommendations)""",
    "serving.latest_similar_items": """
        SELECT * FROM serving.similar_items
        WHERE run_date = (SELECT max(run_date) FROM serving.similar_items)""",
}


# Columns added since a table was first shipped: warehouses created before get them on the next write.
ADDED_COLUMNS = {
    "eval.metrics": ["partition_date DATE"],
    "raw.items": ["listed BOOLEAN"],   # in the item file (a catalog item, known with or without events)
    "raw.users": ["listed BOOLEAN"],
}


def warehouse_id(conn: duckdb.DuckDBPyConnection) -> str:
    """This warehouse's id, created on first use."""
    ensure_schema(conn)
    conn.execute("INSERT INTO meta.warehouse SELECT substr(replace(CAST(uuid() AS VARCHAR), '-', ''), 1, 12), now() "
                 "WHERE NOT EXISTS (SELECT 1 FROM meta.warehouse)")
    return conn.execute("SELECT warehouse_id FROM meta.warehouse").fetchall()[0][0]


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    for schema in SCHEMAS:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for table, columns in TABLES.items():
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
    for table, added in ADDED_COLUMNS.items():
        for column in added:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")
    for view, query in VIEWS.items():
        conn.execute(f"CREATE VIEW IF NOT EXISTS {view} AS {query}")
