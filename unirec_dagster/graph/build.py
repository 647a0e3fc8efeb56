"""Build a knowledge-graph snapshot in DuckDB, set-based, from the raw tables.

A snapshot for date D uses only events before the end of D, even when the warehouse already
holds later days, so historic backfills never learn of the future. Entities and relations get
ids once and keep them: new ones are appended, nothing is renumbered.

Relations, all derived from the dataset spec:
- user -> item, one relation per event type, with counts and a time-decayed weight;
- item -> attribute value per item attribute, item -> price band (quantiles), item -> keyword;
- user -> attribute value per user attribute;
- item -> item co-occurrence within a basket (session), top-N per item by Jaccard.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import duckdb

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.datasets.spec import BUILT_IN_ENTITY_TYPES
from unirec_dagster.graph.params import KGParams
from unirec_dagster.graph.stopwords import STOP_WORDS
from unirec_dagster.ingest import catalog_as_of
from unirec_dagster.warehouse import Params, ensure_schema, rows, transaction

USER, ITEM, KEYWORD, PRICE_BAND = BUILT_IN_ENTITY_TYPES
CO_OCCURS = "item_co_occurs"


@dataclass
class SnapshotStats:
    snapshot_date: dt.date
    entities_by_type: dict[str, int]
    triples_by_relation: dict[str, int]
    new_entities: int
    seconds: float

    @property
    def triples(self) -> int:
        return sum(self.triples_by_relation.values())


def _stage_inputs(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, before: dt.datetime, params: KGParams) -> None:
    """Temp tables of everything the snapshot is built from, all cut at `before`."""
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE kg_events AS "
        "SELECT user_id, item_id, ts, event_type, session_id FROM raw.events WHERE ts < $before",
        {"before": before},
    )
    catalog_as_of(conn, spec, "items", before)
    catalog_as_of(conn, spec, "users", before)

    p = Params()
    bands = params.price_bands
    cuts = [i / bands for i in range(1, bands)]
    # Price bands: quantile cuts over item prices; band k holds prices in the k-th quantile range.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE kg_price_bands AS
        WITH cuts AS (
            SELECT {f"quantile_cont(price, {p.add(cuts, 'DOUBLE[]')})" if cuts else "[]::DOUBLE[]"} AS q
            FROM catalog_items WHERE price > 0
        )
        SELECT item_id, 'q' || (1 + len(list_filter(q, lambda c: c < price))) AS band,
               1 + len(list_filter(q, lambda c: c < price)) AS band_number, q
        FROM catalog_items, cuts WHERE price > 0
    """, p)

    p = Params()
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE kg_keywords AS
        WITH tokens AS (
            SELECT DISTINCT item_id, unnest(regexp_split_to_array(
                lower(coalesce(title, '') || ' ' || coalesce(description, '')), '[^\\p{{L}}\\p{{N}}]+')) AS token
            FROM catalog_items
        ),
        usable AS (
            SELECT * FROM tokens
            WHERE length(token) >= 2 AND NOT regexp_full_match(token, '[0-9]+')
              AND NOT list_contains({p.add(STOP_WORDS, 'VARCHAR[]')}, token)
        ),
        frequency AS (
            SELECT token, count(*) AS items FROM usable GROUP BY token
            HAVING count(*) >= {p.add(params.keyword_min_items, 'BIGINT')}
               AND count(*) <= {p.add(params.keyword_max_item_share, 'DOUBLE')} * (SELECT count(*) FROM catalog_items)
        ),
        ranked AS (
            SELECT u.item_id, u.token, f.items,
                   row_number() OVER (PARTITION BY u.item_id ORDER BY f.items, u.token) AS rank
            FROM usable u JOIN frequency f USING (token)
        )
        SELECT item_id, token, ln((SELECT count(*) FROM catalog_items) / items) AS idf
        FROM ranked WHERE rank <= {p.add(params.keywords_per_item, 'BIGINT')}
    """, p)

    # Baskets: the session id when the log has one, else the user's day. Positive events only.
    p = Params()
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE kg_cooccurrence AS
        WITH baskets AS (
            SELECT coalesce(session_id, user_id || '|' || CAST(ts AS DATE)) AS basket, item_id, min(ts) AS ts
            FROM kg_events WHERE event_type = {p.add(spec.events.positive_event_type)}
            GROUP BY 1, 2
        ),
        sized AS (SELECT *, count(*) OVER (PARTITION BY basket) AS basket_items FROM baskets),
        kept AS (SELECT basket, item_id, ts FROM sized
                 WHERE basket_items BETWEEN 2 AND {p.add(params.max_basket_items, 'BIGINT')}),
        support AS (SELECT item_id, count(*) AS baskets FROM kept GROUP BY 1),
        pairs AS (
            SELECT a.item_id AS head, b.item_id AS tail, count(*) AS together, min(a.ts) AS first_seen, max(a.ts) AS last_seen
            FROM kept a JOIN kept b ON a.basket = b.basket AND a.item_id <> b.item_id
            GROUP BY 1, 2 HAVING count(*) >= {p.add(params.cooccurrence_min_support, 'BIGINT')}
        ),
        scored AS (
            SELECT pairs.*, together / (sa.baskets + sb.baskets - together) AS jaccard
            FROM pairs JOIN support sa ON sa.item_id = head JOIN support sb ON sb.item_id = tail
        )
        SELECT * FROM scored
        QUALIFY row_number() OVER (PARTITION BY head ORDER BY jaccard DESC, together DESC, tail)
                <= {p.add(params.cooccurrence_top_n, 'BIGINT')}
    """, p)


def _stage_candidates(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> None:
    """kg_candidate_entities(entity_type, natural_key, display_name, first_seen, last_seen) and
    kg_candidate_triples(head_type, head_key, relation, tail_type, tail_key, weight, event_count, first_seen, last_seen)."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE kg_attribute_edges AS
        SELECT '{ITEM}' AS head_type, item_id AS head_key, 'item_' || e.key AS relation, e.key AS tail_type,
               unnest(e.value) AS tail_key, first_seen, last_seen
        FROM (SELECT item_id, unnest(map_entries(attributes)) AS e, first_seen, last_seen FROM catalog_items)
        UNION ALL
        SELECT '{USER}', user_id, 'user_' || e.key, e.key, unnest(e.value), first_seen, last_seen
        FROM (SELECT user_id, unnest(map_entries(attributes)) AS e, first_seen, last_seen FROM catalog_users)
    """)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE kg_candidate_entities AS
        SELECT '{USER}' AS entity_type, user_id AS natural_key, user_id AS display_name, first_seen, last_seen
        FROM catalog_users
        UNION ALL
        SELECT '{ITEM}', item_id, coalesce(title, item_id), first_seen, last_seen FROM catalog_items
        UNION ALL
        SELECT tail_type, tail_key, tail_key, min(first_seen), max(last_seen) FROM kg_attribute_edges GROUP BY 1, 2
        UNION ALL
        SELECT '{PRICE_BAND}', band, band || ': ' ||
               CASE WHEN band_number = 1 THEN 'up to ' || round(q[1], 2)
                    WHEN band_number > len(q) THEN 'over ' || round(q[len(q)], 2)
                    ELSE round(q[band_number - 1], 2) || ' to ' || round(q[band_number], 2) END,
               NULL, NULL
        FROM (SELECT DISTINCT band, band_number, q FROM kg_price_bands)
        UNION ALL
        SELECT DISTINCT '{KEYWORD}', token, token, NULL::TIMESTAMP, NULL::TIMESTAMP FROM kg_keywords
    """)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE kg_candidate_triples AS
        SELECT '{USER}' AS head_type, user_id AS head_key, event_type AS relation, '{ITEM}' AS tail_type,
               item_id AS tail_key,
               sum(pow(0.5, (epoch(snapshot_end) - epoch(ts)) / 86400.0 / half_life)) AS weight,
               count(*) AS event_count, min(ts) AS first_seen, max(ts) AS last_seen
        FROM kg_events, kg_build_settings GROUP BY user_id, event_type, item_id
        UNION ALL
        SELECT head_type, head_key, relation, tail_type, tail_key, 1.0, NULL, first_seen, last_seen FROM kg_attribute_edges
        UNION ALL
        SELECT '{ITEM}', item_id, 'item_{PRICE_BAND}', '{PRICE_BAND}', band, 1.0, NULL, NULL, NULL FROM kg_price_bands
        UNION ALL
        SELECT '{ITEM}', item_id, 'item_{KEYWORD}', '{KEYWORD}', token, idf, NULL, NULL, NULL FROM kg_keywords
        UNION ALL
        SELECT '{ITEM}', head, '{CO_OCCURS}', '{ITEM}', tail, jaccard, together, first_seen, last_seen FROM kg_cooccurrence
    """)


def _register_ids(conn: duckdb.DuckDBPyConnection, positive_event_type: str) -> int:
    """Give new entities and relations the next free ids; refresh names and seen-times of known ones."""
    new = rows(conn, """
        SELECT count(*) FROM kg_candidate_entities c
        ANTI JOIN kg.entities e ON e.entity_type = c.entity_type AND e.natural_key = c.natural_key""")[0][0]
    conn.execute("""
        INSERT INTO kg.entities
        SELECT (SELECT coalesce(max(entity_id), -1) FROM kg.entities)
               + row_number() OVER (ORDER BY c.entity_type, c.natural_key),
               c.entity_type, c.natural_key, c.display_name, c.first_seen, c.last_seen
        FROM kg_candidate_entities c
        ANTI JOIN kg.entities e ON e.entity_type = c.entity_type AND e.natural_key = c.natural_key""")
    conn.execute("""
        UPDATE kg.entities e SET
            display_name = CASE WHEN c.last_seen IS NULL OR e.last_seen IS NULL OR c.last_seen >= e.last_seen
                                THEN c.display_name ELSE e.display_name END,
            first_seen = least(e.first_seen, c.first_seen),
            last_seen = greatest(e.last_seen, c.last_seen)
        FROM kg_candidate_entities c
        WHERE e.entity_type = c.entity_type AND e.natural_key = c.natural_key""")
    conn.execute("""
        INSERT INTO kg.relations
        SELECT (SELECT coalesce(max(relation_id), -1) FROM kg.relations) + row_number() OVER (ORDER BY relation),
               relation, head_type, tail_type,
               CASE WHEN head_type = 'user' AND tail_type = 'item' THEN 'events'
                    WHEN relation = 'item_co_occurs' THEN 'baskets'
                    WHEN relation = 'item_keyword' THEN 'item text'
                    WHEN relation = 'item_price_band' THEN 'item price'
                    ELSE head_type || ' attributes' END
        FROM (SELECT DISTINCT relation, head_type, tail_type FROM kg_candidate_triples) c
        ANTI JOIN kg.relations r ON r.name = c.relation""")
    # The target behaviour's relation is marked, so models read it without knowing the spec.
    conn.execute("""UPDATE kg.relations SET source = CASE WHEN name = $p THEN 'positive events' ELSE 'events' END
                    WHERE head_type = 'user' AND tail_type = 'item'""", {"p": positive_event_type})
    return new


def build_snapshot(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, snapshot_date: dt.date,
                   params: KGParams | None = None, run_id: str | None = None) -> SnapshotStats:
    """Build (or rebuild) the KG snapshot of `snapshot_date` from events before the end of that day."""
    params = params or KGParams()
    started = time.perf_counter()
    ensure_schema(conn)
    before = dt.datetime.combine(snapshot_date + dt.timedelta(days=1), dt.time())
    conn.execute("CREATE OR REPLACE TEMP TABLE kg_build_settings AS SELECT $end AS snapshot_end, $half AS half_life",
                 {"end": before, "half": params.half_life_days})
    _stage_inputs(conn, spec, before, params)
    _stage_candidates(conn, spec)
    with transaction(conn):
        new = _register_ids(conn, spec.events.positive_event_type)
        conn.execute("DELETE FROM kg.triples WHERE snapshot_date = $d", {"d": snapshot_date})
        conn.execute("""
            INSERT INTO kg.triples
            SELECT $d, h.entity_id, r.relation_id, t.entity_id, c.weight, c.event_count, c.first_seen, c.last_seen
            FROM kg_candidate_triples c
            JOIN kg.entities h ON h.entity_type = c.head_type AND h.natural_key = c.head_key
            JOIN kg.relations r ON r.name = c.relation
            JOIN kg.entities t ON t.entity_type = c.tail_type AND t.natural_key = c.tail_key""", {"d": snapshot_date})
        by_relation = dict(rows(conn, """
            SELECT r.name, count(t.relation_id) FROM kg.relations r
            LEFT JOIN kg.triples t ON t.relation_id = r.relation_id AND t.snapshot_date = $d
            GROUP BY r.name ORDER BY r.name""", {"d": snapshot_date}))
        by_type = dict(rows(conn, """
            SELECT entity_type, count(*) FROM kg_candidate_entities GROUP BY 1 ORDER BY 1"""))
        seconds = time.perf_counter() - started
        conn.execute("DELETE FROM kg.snapshots WHERE snapshot_date = $d", {"d": snapshot_date})
        conn.execute("INSERT INTO kg.snapshots VALUES ($d, $e, $t, $s, $p, $run, now())", {
            "d": snapshot_date, "e": sum(by_type.values()), "t": sum(by_relation.values()), "s": seconds,
            "p": params.model_dump_json(), "run": run_id})
    return SnapshotStats(snapshot_date, by_type, by_relation, new, seconds)


def build_partition(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, partition: dt.date,
                    params: KGParams | None = None, run_id: str | None = None) -> list[SnapshotStats]:
    """The snapshots the models of day `partition` read: as of that day (serving, final training)
    and as of validation_days before it (the validation fit, pretraining). Older snapshots beyond
    the retention window are deleted; the two built here are always kept."""
    params = params or KGParams()
    days = [partition, partition - dt.timedelta(days=params.validation_days)]
    built = [build_snapshot(conn, spec, day, params, run_id) for day in days]
    with transaction(conn):
        newest = rows(conn, "SELECT max(snapshot_date) FROM kg.snapshots")[0][0]
        oldest_kept = newest - dt.timedelta(days=params.validation_days + params.keep_days)
        for table in ("kg.triples", "kg.snapshots"):
            conn.execute(f"DELETE FROM {table} WHERE snapshot_date < $oldest AND NOT list_contains($days, snapshot_date)",
                         {"oldest": oldest_kept, "days": days})
    return built
