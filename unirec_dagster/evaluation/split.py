"""The temporal holdout of EVALUATION.md, for any cutoff C, straight from raw.events.

Training data: events with ts < C only. Test (or validation) pairs: positive events in
[C, window_end) on items the user had no positive event on before C, for users with any event
before C. Candidates: items with any event before C, and the items listed in an item file (a
catalog item is known before anyone buys it). Everything is indexed by KG entity id
(users) and by position in the candidate list (items).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.warehouse import rows


TEST_WINDOW_DAYS = 14  # EVALUATION.md's default W: the test window is [C, C + W)


def _as_ts(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def _column(table, name: str, dtype=np.int64) -> torch.Tensor:
    return torch.from_numpy(table.column(name).to_numpy().astype(dtype))


@dataclass
class TrainingData:
    """What a model may know at the cutoff."""

    cutoff: dt.date
    items: torch.Tensor             # (I,) entity ids of the candidate items
    train_users: torch.Tensor       # (P,) entity ids: distinct (user, item) positive pairs before C
    train_items: torch.Tensor       # (P,) candidate positions
    train_last_days: torch.Tensor   # (P,) days between the pair's last positive event and C
    train_counts: torch.Tensor      # (P,) positive events of the pair
    popularity: torch.Tensor        # (I,) distinct users with a positive event on the item, all history
    recent_popularity: torch.Tensor  # (I,) the same, in the last `recent_share` of the span
    positive_counts: torch.Tensor   # (I,) positive events on the item, all history
    interacted: torch.Tensor | None = None  # (I,) bool: any event before C (else only listed in the catalog)

    def __post_init__(self):
        if self.interacted is None:
            self.interacted = torch.ones(len(self.items), dtype=torch.bool)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def positive_events_of(self, users: torch.Tensor) -> torch.Tensor:
        """Positive events before the cutoff of each user (entity ids); 0 for users without any."""
        if not len(users):
            return torch.zeros(0, dtype=torch.long)
        size = int(torch.cat([self.train_users, users]).max()) + 1
        return torch.zeros(size, dtype=torch.long).index_add_(0, self.train_users, self.train_counts)[users]


@dataclass
class HoldoutPairs:
    """Positive pairs of a window after the cutoff, for the evaluated users."""

    users: torch.Tensor             # (U,) entity ids
    pair_users: torch.Tensor        # rows into users
    pair_items: torch.Tensor        # candidate positions; -1 for items unknown before C
    positives_per_user: torch.Tensor
    unseen_item_pair: torch.Tensor  # (pairs,) bool: the item had no positive event before C

    def subset(self, keep_users: torch.Tensor, keep_pairs: torch.Tensor) -> "HoldoutPairs":
        """The users where `keep_users` (U,) is set, with their pairs where `keep_pairs` (pairs,) is
        set; `positives_per_user` counts the kept pairs."""
        rows = torch.nonzero(keep_users, as_tuple=True)[0]
        new_row = torch.full((len(self.users),), -1, dtype=torch.long)
        new_row[rows] = torch.arange(len(rows))
        pairs = keep_pairs & keep_users[self.pair_users]
        pair_users = new_row[self.pair_users[pairs]]
        return HoldoutPairs(self.users[rows], pair_users, self.pair_items[pairs],
                            torch.bincount(pair_users, minlength=len(rows)), self.unseen_item_pair[pairs])


def _entity_join(kind: str, column: str) -> str:
    return f"JOIN kg.entities {kind[0]}e ON {kind[0]}e.entity_type = '{kind}' AND {kind[0]}e.natural_key = {column}"


def load_training(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, cutoff: dt.date,
                  recent_share: float = 0.1) -> TrainingData:
    params = {"c": _as_ts(cutoff), "pos": spec.events.positive_event_type}
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE eval_items AS
        SELECT ie.entity_id, row_number() OVER (ORDER BY ie.entity_id) - 1 AS position,
               ev.item_id IN (SELECT item_id FROM raw.events WHERE ts < $c) AS interacted
        FROM (SELECT DISTINCT item_id FROM raw.events WHERE ts < $c
              UNION SELECT item_id FROM raw.items WHERE listed) ev {_entity_join('item', 'ev.item_id')}""",
                 {"c": params["c"]})
    items = conn.sql("SELECT entity_id, interacted FROM eval_items ORDER BY position").to_arrow_table()
    pairs = conn.sql(f"""
        SELECT ue.entity_id AS user_id, ei.position AS item, count(*) AS events,
               (epoch($c) - epoch(max(ev.ts))) / 86400.0 AS last_days
        FROM raw.events ev {_entity_join('user', 'ev.user_id')} {_entity_join('item', 'ev.item_id')}
        JOIN eval_items ei ON ei.entity_id = ie.entity_id
        WHERE ev.ts < $c AND ev.event_type = $pos
        GROUP BY 1, 2 ORDER BY 1, 2""", params=params).to_arrow_table()
    span_start = rows(conn, "SELECT min(ts) FROM raw.events WHERE ts < $c", {"c": params["c"]})[0][0]
    recent_from = params["c"] - (params["c"] - span_start) * recent_share if span_start else params["c"]
    popularity = conn.sql("""
        SELECT ei.position, count(DISTINCT ev.user_id) AS users, count(*) AS events,
               count(DISTINCT ev.user_id) FILTER (WHERE ev.ts >= $recent) AS recent
        FROM raw.events ev JOIN kg.entities ie ON ie.entity_type = 'item' AND ie.natural_key = ev.item_id
        JOIN eval_items ei ON ei.entity_id = ie.entity_id
        WHERE ev.ts < $c AND ev.event_type = $pos GROUP BY 1""", params={**params, "recent": recent_from}).to_arrow_table()
    num_items = len(items)
    popular = torch.zeros(num_items)
    recent = torch.zeros(num_items)
    events = torch.zeros(num_items)
    position = _column(popularity, "position")
    popular[position] = _column(popularity, "users", np.float32)
    recent[position] = _column(popularity, "recent", np.float32)
    events[position] = _column(popularity, "events", np.float32)
    return TrainingData(cutoff, _column(items, "entity_id"), _column(pairs, "user_id"), _column(pairs, "item"),
                        _column(pairs, "last_days", np.float32), _column(pairs, "events"), popular, recent,
                        events, torch.from_numpy(items.column("interacted").to_numpy(zero_copy_only=False).astype(bool)))


def load_holdout(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, data: TrainingData,
                 window_end: dt.date) -> HoldoutPairs:
    """The window [data.cutoff, window_end), with items placed in `data`'s candidate list."""
    conn.register("holdout_items", pa.table({"entity_id": data.items.numpy(),
                                             "position": np.arange(data.num_items, dtype=np.int64)}))
    table = conn.sql(f"""
        WITH window_pairs AS (
            SELECT DISTINCT user_id, item_id FROM raw.events
            WHERE ts >= $c AND ts < $end AND event_type = $pos
        ),
        before AS (SELECT DISTINCT user_id, item_id, event_type = $pos AS positive FROM raw.events WHERE ts < $c),
        users_before AS (SELECT DISTINCT user_id FROM before),
        fresh AS (
            SELECT w.* FROM window_pairs w
            WHERE w.user_id IN (SELECT user_id FROM users_before)
              AND NOT EXISTS (SELECT 1 FROM before b WHERE b.positive AND b.user_id = w.user_id AND b.item_id = w.item_id)
        )
        SELECT ue.entity_id AS user_id, coalesce(ei.position, -1) AS item,
               NOT EXISTS (SELECT 1 FROM before b WHERE b.positive AND b.item_id = f.item_id) AS unseen_item
        FROM fresh f {_entity_join('user', 'f.user_id')}
        LEFT JOIN kg.entities ie ON ie.entity_type = 'item' AND ie.natural_key = f.item_id
        LEFT JOIN holdout_items ei ON ei.entity_id = ie.entity_id
        ORDER BY 1, 2""", params={"c": _as_ts(data.cutoff), "end": _as_ts(window_end),
                                   "pos": spec.events.positive_event_type}).to_arrow_table()
    conn.unregister("holdout_items")
    pair_user_ids = _column(table, "user_id")
    users, pair_users = torch.unique(pair_user_ids, return_inverse=True)
    return HoldoutPairs(users, pair_users, _column(table, "item"),
                        torch.bincount(pair_users, minlength=len(users)),
                        torch.from_numpy(table.column("unseen_item").to_numpy(zero_copy_only=False).astype(bool)))
