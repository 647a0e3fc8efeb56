"""EVALUATION.md's strict item cold start, for datasets whose catalog is only what was bought, and
its launches (items first sold in the test window, listed in the catalog before the cutoff).

A seeded random share (10%) of the candidate items loses every training event (ts < C) in a
scratch copy of the warehouse; their text and attributes stay, as catalog items nobody has
interacted with (`raw.items.listed`). The pipeline then trains and serves there as usual, and the
test pairs of the hidden items are scored for the served table and two baselines on the same
split: content (cosine of the item's text vector to the mean of the user's past items' vectors)
and attribute popularity (how often the item's attribute values and keywords occur among the
user's past items).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import torch

from unirec_dagster.evaluation.evaluate import SliceResult, subset_metrics
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.history import TrainingData
from unirec_dagster.model.encoder import TextView
from unirec_dagster.ranking.content import ItemContent
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.topk import block_rows, top_k
from unirec_dagster.warehouse import connect, ensure_schema, quote_path, rows

HIDDEN_SHARE = 0.1
COPIED = ("raw.events", "raw.items", "raw.users", "features.text_embeddings", "features.item_texts")


def choose_hidden_items(conn: duckdb.DuckDBPyConnection, cutoff: dt.date, share: float = HIDDEN_SHARE,
                        seed: int = 0) -> list[str]:
    """A seeded random `share` of the items with an event before `cutoff` (the candidates)."""
    items = [r[0] for r in rows(conn, "SELECT DISTINCT item_id FROM raw.events WHERE ts < $c ORDER BY 1",
                                {"c": dt.datetime.combine(cutoff, dt.time())})]
    pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:round(share * len(items))]
    return sorted(items[i] for i in pick.tolist())


def launched_items(conn: duckdb.DuckDBPyConnection, cutoff: dt.date, window_end: dt.date, positive: str) -> list[str]:
    """EVALUATION.md's launches: items with no event before `cutoff` whose first positive event falls
    in [cutoff, window_end). Listed in the catalog before the cutoff (`hide_items` with them), nothing
    else changes."""
    return [r[0] for r in rows(conn, """
        SELECT item_id FROM raw.events GROUP BY 1
        HAVING min(ts) >= $c AND min(ts) FILTER (WHERE event_type = $pos) < $end ORDER BY 1""",
                               {"c": dt.datetime.combine(cutoff, dt.time()),
                                "end": dt.datetime.combine(window_end, dt.time()), "pos": positive})]


def hide_items(source: Path, target: Path, cutoff: dt.date, hidden: list[str]) -> duckdb.DuckDBPyConnection:
    """A scratch warehouse at `target`: `source` without any event of the hidden items before the
    cutoff, the hidden items kept in raw.items as listed catalog items. Returns a connection to it."""
    target.unlink(missing_ok=True)
    conn = connect(target)
    ensure_schema(conn)
    conn.execute(f"ATTACH {quote_path(Path(source).resolve())} AS source (READ_ONLY)")
    conn.register("hidden_items", pa.table({"item_id": pa.array(hidden, pa.string())}))
    try:
        for table in COPIED:
            conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM source.{table}")
        conn.execute("DELETE FROM raw.events WHERE ts < $c AND item_id IN (SELECT item_id FROM hidden_items)",
                     {"c": dt.datetime.combine(cutoff, dt.time())})
        conn.execute("UPDATE raw.items SET listed = true WHERE item_id IN (SELECT item_id FROM hidden_items)")
    finally:
        conn.unregister("hidden_items")
        conn.execute("DETACH source")
    return conn


def earlier_buyers(conn: duckdb.DuckDBPyConnection, cutoff: dt.date, hidden: list[str], positive: str) -> pa.Table:
    """(user_id, item_id) natural keys of the hidden items' positive events before the cutoff, read
    from the real warehouse before `hide_items` removes them."""
    return conn.sql("""
        SELECT DISTINCT user_id, item_id FROM raw.events
        WHERE ts < $c AND event_type = $pos AND list_contains($h, item_id)""",
                    params={"c": dt.datetime.combine(cutoff, dt.time()), "pos": positive, "h": hidden}).to_arrow_table()


def new_to_the_user(conn: duckdb.DuckDBPyConnection, data: TrainingData, holdout: HoldoutPairs,
                    earlier: pa.Table) -> HoldoutPairs:
    """The holdout without the pairs the user had bought before the cutoff in the real data
    (`earlier_buyers`): EVALUATION.md judges "new to the user" before the hiding, since no one has
    bought a real new item before. Users left without a pair are no longer evaluated."""
    conn.register("earlier_buyers", earlier)
    try:
        known = rows(conn, """
            SELECT ue.entity_id, ie.entity_id FROM earlier_buyers b
            JOIN kg.entities ue ON ue.entity_type = 'user' AND ue.natural_key = b.user_id
            JOIN kg.entities ie ON ie.entity_type = 'item' AND ie.natural_key = b.item_id""")
    finally:
        conn.unregister("earlier_buyers")
    width = int(data.items.max()) + 1 if len(data.items) else 1
    repeat = torch.tensor([u * width + i for u, i in known], dtype=torch.long)
    pair_entities = torch.where(holdout.pair_items >= 0, data.items[holdout.pair_items.clamp(min=0)], -1)
    keep_pairs = ~torch.isin(holdout.users[holdout.pair_users] * width + pair_entities, repeat) | (pair_entities < 0)
    keep_users = torch.zeros(len(holdout.users), dtype=torch.bool)
    keep_users[holdout.pair_users[keep_pairs]] = True
    return holdout.subset(keep_users, keep_pairs)


def hidden_pairs(conn: duckdb.DuckDBPyConnection, data: TrainingData, holdout: HoldoutPairs,
                 hidden: list[str]) -> torch.Tensor:
    """(pairs,) bool: the holdout pairs whose item is hidden."""
    ids = torch.tensor([r[0] for r in rows(conn, """
        SELECT entity_id FROM kg.entities WHERE entity_type = 'item' AND list_contains($h, natural_key)""",
                                           {"h": hidden})], dtype=torch.long)
    return (holdout.pair_items >= 0) & torch.isin(data.items[holdout.pair_items.clamp(min=0)], ids)


ScoreFunction = Callable[[torch.Tensor], torch.Tensor]  # user entity ids -> (users, items) scores


def content_scores(signals: Signals, text: TextView) -> ScoreFunction:
    """Cosine of each item's text vector to the mean text vector of the user's past items."""
    content = ItemContent(signals.data.items, text.ids, text.vectors)
    return lambda users: content.text_similarity(signals.history_of(users))


def attribute_popularity_scores(signals: Signals, graph: KnowledgeGraph) -> ScoreFunction:
    """How often each of the item's attribute values and keywords occurs among the user's past items."""
    content = ItemContent(signals.data.items, graph=graph)
    return lambda users: content.attribute_overlap(signals.history_of(users))


def rank_with(scores: ScoreFunction, signals: Signals, users: torch.Tensor, k: int = 50) -> torch.Tensor:
    """(len(users), k) candidate positions by `scores`, the users' past purchases excluded."""
    exclude_rows, exclude_items = signals.exclusions(users)
    _, top = top_k(lambda r: scores(users[r]), len(users), k, exclude_rows, exclude_items,
                   block_rows(signals.data.num_items))
    return top


def hidden_item_metrics(top: torch.Tensor, holdout: HoldoutPairs, hidden: torch.Tensor,
                        num_items: int) -> SliceResult:
    """Metrics over the hidden items' test pairs only, for the users who have one."""
    return subset_metrics("hidden_items", top, holdout, hidden, num_items)
