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
from unirec_dagster.history import TrainingData, as_timestamp, entity_join, tensor_column

TEST_WINDOW_DAYS = 14  # EVALUATION.md's default W: the test window is [C, C + W)


@dataclass
class HoldoutPairs:
    """Positive pairs of a window after the cutoff, for the evaluated users."""

    users: torch.Tensor             # (U,) entity ids
    pair_users: torch.Tensor        # rows into users
    pair_items: torch.Tensor        # candidate positions; -1 for items unknown before C
    positives_per_user: torch.Tensor
    unseen_item_pair: torch.Tensor  # (pairs,) bool: the item had no positive event before C

    def subset(self, keep_users: torch.Tensor, keep_pairs: torch.Tensor) -> HoldoutPairs:
        """The users where `keep_users` (U,) is set, with their pairs where `keep_pairs` (pairs,) is
        set; `positives_per_user` counts the kept pairs."""
        rows = torch.nonzero(keep_users, as_tuple=True)[0]
        new_row = torch.full((len(self.users),), -1, dtype=torch.long)
        new_row[rows] = torch.arange(len(rows))
        pairs = keep_pairs & keep_users[self.pair_users]
        pair_users = new_row[self.pair_users[pairs]]
        return HoldoutPairs(self.users[rows], pair_users, self.pair_items[pairs],
                            torch.bincount(pair_users, minlength=len(rows)), self.unseen_item_pair[pairs])


def load_holdout(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, data: TrainingData,
                 window_end: dt.date, forgotten: torch.Tensor | None = None) -> HoldoutPairs:
    """The window [data.cutoff, window_end), with items placed in `data`'s candidate list. The
    earlier purchases of `forgotten` items (entity ids: items whose history is hidden, as in item
    dropout) do not count: buying one again in the window is a pair (`simulated_repeat_buyers`;
    EVALUATION.md's strict protocol no longer counts those)."""
    conn.register("holdout_items", pa.table({"entity_id": data.items.numpy(),
                                             "position": np.arange(data.num_items, dtype=np.int64)}))
    forgotten_ = forgotten if forgotten is not None else torch.empty(0, dtype=torch.long)
    conn.register("forgotten_items", pa.table({"entity_id": forgotten_.numpy()}))
    table = conn.sql(f"""
        WITH window_pairs AS (
            SELECT DISTINCT user_id, item_id FROM raw.events
            WHERE ts >= $c AND ts < $end AND event_type = $pos
        ),
        before AS (SELECT DISTINCT user_id, item_id, event_type = $pos AND item_id NOT IN (
                       SELECT natural_key FROM kg.entities WHERE entity_type = 'item'
                         AND entity_id IN (SELECT entity_id FROM forgotten_items)) AS positive
                   FROM raw.events WHERE ts < $c),
        users_before AS (SELECT DISTINCT user_id FROM before),
        fresh AS (
            SELECT w.* FROM window_pairs w
            WHERE w.user_id IN (SELECT user_id FROM users_before)
              AND NOT EXISTS (SELECT 1 FROM before b WHERE b.positive AND b.user_id = w.user_id AND b.item_id = w.item_id)
        )
        SELECT ue.entity_id AS user_id, coalesce(ei.position, -1) AS item,
               NOT EXISTS (SELECT 1 FROM before b WHERE b.positive AND b.item_id = f.item_id) AS unseen_item
        FROM fresh f {entity_join('user', 'f.user_id')}
        LEFT JOIN kg.entities ie ON ie.entity_type = 'item' AND ie.natural_key = f.item_id
        LEFT JOIN holdout_items ei ON ei.entity_id = ie.entity_id
        ORDER BY 1, 2""", params={"c": as_timestamp(data.cutoff), "end": as_timestamp(window_end),
                                   "pos": spec.events.positive_event_type}).to_arrow_table()
    conn.unregister("holdout_items")
    conn.unregister("forgotten_items")
    pair_user_ids = tensor_column(table, "user_id")
    users, pair_users = torch.unique(pair_user_ids, return_inverse=True)
    return HoldoutPairs(users, pair_users, tensor_column(table, "item"),
                        torch.bincount(pair_users, minlength=len(users)),
                        torch.from_numpy(table.column("unseen_item").to_numpy(zero_copy_only=False).astype(bool)))
