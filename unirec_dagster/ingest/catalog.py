"""raw.items and raw.users: the latest attributes of every item and user.

Attributes come either from columns of the event rows (kept in raw.events.context) or from a
separate file joined by id. Both paths first gather (entity_id, order_key, columns...) rows and
then keep, per attribute, the value of the latest row that has one (latest event, or the last
line of the file), so the two sources share one aggregation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from unirec_dagster.datasets import DatasetSpec, read_records
from unirec_dagster.datasets.readers import LINE_COLUMN, RAW_COLUMN
from unirec_dagster.datasets.spec import EntitySpec
from unirec_dagster.ingest import sql
from unirec_dagster.warehouse import Params, ensure_schema, rows, scalar, transaction
from unirec_dagster.warehouse import quote_identifier as q


@dataclass
class CatalogStats:
    kind: str
    entities: int
    with_attributes: int
    rejected: int


def _source_rows(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, kind: str, entity: EntitySpec,
                 run_id: str | None, before: dt.datetime | None) -> int:
    """Fill temp table entity_rows(entity_id, order_key, <source columns>); returns rows rejected.

    `before` keeps only events before that moment (as-of builds); it does not apply to a file,
    which has no time. Rejects of a file are recorded only by the full build (before=None).
    """
    columns = entity.source_columns()
    if entity.file is None:
        id_column = "item_id" if kind == "items" else "user_id"
        p = Params()
        selected = ", ".join(f"context[{p.add(c)}] AS {q(c)}" for c in columns)
        conn.execute(
            f"""CREATE OR REPLACE TEMP TABLE entity_rows AS
                SELECT {id_column} AS entity_id, epoch_us(ts) AS order_key{', ' + selected if selected else ''}
                FROM raw.events WHERE ts < {p.add(before or dt.datetime.max, 'TIMESTAMP')}""",
            p,
        )
        return 0

    path, file_id = spec.resolve(entity.file.path), entity.id
    assert file_id is not None  # the spec refuses a file without an id at load
    if not path.is_file():
        raise FileNotFoundError(f"{kind} attribute file {path} (key '{kind}.file.path' of the dataset spec) not found")
    records = read_records(path, entity.file, list(dict.fromkeys([file_id.column, *columns])))
    conn.register("entity_arrow", records.table)
    conn.register("entity_structural", pa.table({
        "source_line": pa.array([r.line for r in records.rejects], pa.int64()),
        "reason": pa.array([r.reason for r in records.rejects], pa.string()),
        "detail": pa.array([r.detail for r in records.rejects], pa.string()),
        "raw_content": pa.array([r.raw for r in records.rejects], pa.string()),
    }))
    try:
        selected = ", ".join(f"{sql.text(c)} AS {q(c)}" for c in columns)
        conn.execute(
            f"""CREATE OR REPLACE TEMP TABLE entity_file_rows AS
                SELECT {sql.identifier(file_id)} AS entity_id, {LINE_COLUMN} AS order_key,
                       {RAW_COLUMN} AS raw_content{', ' + selected if selected else ''}
                FROM entity_arrow"""
        )
        conn.execute("CREATE OR REPLACE TEMP TABLE entity_rows AS SELECT * EXCLUDE (raw_content) "
                     "FROM entity_file_rows WHERE entity_id IS NOT NULL")
        if before is not None:
            return 0
        now = dt.datetime.now()
        with transaction(conn):
            conn.execute("DELETE FROM raw.rejected_events WHERE source_kind = ?", [kind])
            conn.execute(
                """INSERT INTO raw.rejected_events
                   SELECT NULL, ?, ?, order_key, 'missing_id', 'no id in column ' || ?, raw_content, ?, ?
                   FROM entity_file_rows WHERE entity_id IS NULL
                   UNION ALL
                   SELECT NULL, ?, ?, source_line, reason, detail, raw_content, ?, ? FROM entity_structural""",
                [kind, str(path), entity.id.column, run_id, now, kind, str(path), run_id, now],
            )
    finally:
        conn.unregister("entity_arrow")
        conn.unregister("entity_structural")
    return scalar(conn, "SELECT count(*) FROM raw.rejected_events WHERE source_kind = ?", [kind])


def _latest(column: str) -> str:
    value = q(column)
    return f"arg_max({value}, order_key) FILTER (WHERE {value} IS NOT NULL AND {value} <> '')"


def _clean_text(expr: str) -> str:
    return rf"NULLIF(regexp_replace(trim({expr}), '\s+', ' ', 'g'), '')"


def _catalog_query(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, kind: str, run_id: str | None,
                   before: dt.datetime | None) -> tuple[str, Params, int]:
    """The SELECT of raw.<kind>'s columns as of `before` (None: everything), its params, rows rejected."""
    if kind not in ("items", "users"):
        raise ValueError(f"kind must be 'items' or 'users', not {kind!r}")
    ensure_schema(conn)
    entity: EntitySpec = getattr(spec, kind)
    rejected = _source_rows(conn, spec, kind, entity, run_id, before)
    id_column = "item_id" if kind == "items" else "user_id"

    p = Params()
    if entity.attributes:
        names = p.add(list(entity.attributes), "VARCHAR[]")
        values = ", ".join(sql.attribute_values(a, _latest, p) for a in entity.attributes.values())
        attributes = f"MAP({names}, [{values}])"
    else:
        attributes = "NULL::MAP(VARCHAR, VARCHAR[])"
    item_columns = ""
    if kind == "items":
        title = _clean_text(_latest(entity.title)) if entity.title else "NULL"
        description = _clean_text(_latest(entity.description)) if entity.description else "NULL"
        price = (f"arg_max(TRY_CAST({q(entity.price)} AS DOUBLE), order_key) "
                 f"FILTER (WHERE TRY_CAST({q(entity.price)} AS DOUBLE) > 0)") if entity.price else "NULL::DOUBLE"
        item_columns = f"{title} AS title, {description} AS description, {price} AS price,"
    before_sql = p.add(before or dt.datetime.max, "TIMESTAMP")
    query = f"""
        WITH attrs AS (
            SELECT entity_id, {item_columns} {attributes} AS attributes
            FROM entity_rows GROUP BY entity_id
        ),
        seen AS (
            SELECT {id_column} AS entity_id, min(ts) AS first_seen, max(ts) AS last_seen, count(*) AS event_count
            FROM raw.events WHERE ts < {before_sql} GROUP BY 1
        )
        SELECT coalesce(attrs.entity_id, seen.entity_id) AS {id_column}, attrs.* EXCLUDE (entity_id),
               seen.first_seen, seen.last_seen, coalesce(seen.event_count, 0) AS event_count,
               {p.add(entity.file is not None, 'BOOLEAN')} AND attrs.entity_id IS NOT NULL AS listed,
               {p.add(dt.datetime.now(), 'TIMESTAMP')} AS updated_at
        FROM attrs FULL OUTER JOIN seen ON attrs.entity_id = seen.entity_id
    """
    return query, p, rejected


def catalog_as_of(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, kind: str, before: dt.datetime) -> str:
    """Items or users with the attributes known before `before`, in a temp table; returns its name.

    Entities first seen in an event later are left out, so an as-of build never learns of the
    future; entities listed in an attribute file are known at any date (the file has no time), so
    catalog items nobody has bought yet are entities and candidates too.
    """
    query, params, _ = _catalog_query(conn, spec, kind, None, before)
    table = f"catalog_{kind}"
    id_column = "item_id" if kind == "items" else "user_id"
    # Listed entities the source rows do not describe (a catalog kept in raw.{kind} itself) come
    # with the attributes stored there.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        WITH known AS (SELECT * FROM ({query}) WHERE first_seen IS NOT NULL OR listed)
        SELECT * FROM known
        UNION ALL BY NAME
        SELECT * EXCLUDE (first_seen, last_seen, event_count), NULL::TIMESTAMP AS first_seen,
               NULL::TIMESTAMP AS last_seen, 0 AS event_count
        FROM raw.{kind} WHERE listed AND {id_column} NOT IN (SELECT {id_column} FROM known)""", params)
    return table


def build_catalog(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, kind: str,
                  run_id: str | None = None) -> CatalogStats:
    """Rebuild raw.items (kind='items') or raw.users (kind='users') in one transaction."""
    query, params, rejected = _catalog_query(conn, spec, kind, run_id, None)
    with transaction(conn):
        conn.execute(f"DELETE FROM raw.{kind}")
        conn.execute(f"INSERT INTO raw.{kind} BY NAME {query}", params)
    total, with_attributes = rows(
        conn, f"SELECT count(*), count(*) FILTER (WHERE cardinality(attributes) > 0) FROM raw.{kind}")[0]
    return CatalogStats(kind, total, with_attributes, rejected)
