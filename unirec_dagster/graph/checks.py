"""Integrity of a KG snapshot: the facts the asset checks report on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from unirec_dagster.graph.params import KGParams
from unirec_dagster.warehouse import rows


@dataclass
class Integrity:
    dangling_triples: int            # triples whose head or tail id is not an entity
    duplicate_entity_keys: int       # (type, natural key) pairs holding more than one id
    items_without_entity: int        # items with events before the cut but no entity


def check_snapshot(conn: duckdb.DuckDBPyConnection, snapshot_date: dt.date) -> Integrity:
    d = {"d": snapshot_date}
    dangling = rows(conn, """
        SELECT count(*) FROM kg.triples t
        WHERE t.snapshot_date = $d AND (
            NOT EXISTS (SELECT 1 FROM kg.entities e WHERE e.entity_id = t.head_id)
            OR NOT EXISTS (SELECT 1 FROM kg.entities e WHERE e.entity_id = t.tail_id))""", d)[0][0]
    duplicates = rows(conn, """
        SELECT count(*) FROM (SELECT entity_type, natural_key FROM kg.entities GROUP BY 1, 2 HAVING count(*) > 1)""")[0][0]
    missing_items = rows(conn, """
        SELECT count(DISTINCT item_id) FROM raw.events ev
        WHERE ev.ts < $d + INTERVAL 1 DAY AND NOT EXISTS (
            SELECT 1 FROM kg.entities e WHERE e.entity_type = 'item' AND e.natural_key = ev.item_id)""", d)[0][0]
    return Integrity(dangling, duplicates, missing_items)


def relations_out_of_bounds(conn: duckdb.DuckDBPyConnection, snapshot_date: dt.date, params: KGParams) -> dict[str, int]:
    """The relations of a snapshot whose triple count is outside [min_relation_triples, max_relation_triples]."""
    sizes = rows(conn, """
        SELECT r.name, count(t.relation_id) FROM kg.relations r
        LEFT JOIN kg.triples t ON t.relation_id = r.relation_id AND t.snapshot_date = $d GROUP BY 1""",
                 {"d": snapshot_date})
    return {name: n for name, n in sizes if not params.min_relation_triples <= n <= params.max_relation_triples}
