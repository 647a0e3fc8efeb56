"""What is known at a cutoff C, straight from raw.events: the positive pairs before C, item
popularity, and the candidate items (items with any event before C, and the items listed in an item
file: a catalog item is known before anyone buys it). Users are indexed by KG entity id, items by
position in the candidate list. Training, evaluation, ranking and serving all read it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.warehouse import rows


def as_timestamp(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def tensor_column(table, name: str, dtype=np.int64) -> torch.Tensor:
    return torch.from_numpy(table.column(name).to_numpy(zero_copy_only=False).astype(dtype))


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

    def without_history(self, positions: torch.Tensor) -> TrainingData:
        """The same cutoff as if the items at `positions` had never been bought: listed in the catalog
        only (their pairs and popularity gone). How the ranker is shown new items that people did buy
        afterwards (`training.ranking.simulate_new_items`)."""
        hidden = torch.zeros(self.num_items, dtype=torch.bool)
        hidden[positions] = True
        keep = ~hidden[self.train_items]
        zero = lambda x: x.masked_fill(hidden, 0)  # noqa: E731
        return TrainingData(self.cutoff, self.items, self.train_users[keep], self.train_items[keep],
                            self.train_last_days[keep], self.train_counts[keep], zero(self.popularity),
                            zero(self.recent_popularity), zero(self.positive_counts), self.interacted & ~hidden)

    def positive_events_of(self, users: torch.Tensor) -> torch.Tensor:
        """Positive events before the cutoff of each user (entity ids); 0 for users without any."""
        if not len(users):
            return torch.zeros(0, dtype=torch.long)
        size = int(torch.cat([self.train_users, users]).max()) + 1
        return torch.zeros(size, dtype=torch.long).index_add_(0, self.train_users, self.train_counts)[users]


def entity_join(kind: str, column: str) -> str:
    return f"JOIN kg.entities {kind[0]}e ON {kind[0]}e.entity_type = '{kind}' AND {kind[0]}e.natural_key = {column}"


def load_training(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, cutoff: dt.date,
                  recent_share: float = 0.1, catalog_until: dt.date | None = None) -> TrainingData:
    """What is known at `cutoff`. With `catalog_until`, items first seen in [cutoff, catalog_until)
    are catalog items too (known, nobody has interacted with them yet): at a validation cutoff,
    the items a shop introduced during the validation window, for learning where new items belong."""
    params = {"c": as_timestamp(cutoff), "pos": spec.events.positive_event_type}
    introduced = ("UNION SELECT item_id FROM raw.events WHERE ts >= $c AND ts < $until"
                  if catalog_until is not None else "")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE eval_items AS
        SELECT ie.entity_id, row_number() OVER (ORDER BY ie.entity_id) - 1 AS position,
               ev.item_id IN (SELECT item_id FROM raw.events WHERE ts < $c) AS interacted
        FROM (SELECT DISTINCT item_id FROM raw.events WHERE ts < $c
              UNION SELECT item_id FROM raw.items WHERE listed {introduced}) ev {entity_join('item', 'ev.item_id')}""",
                 {"c": params["c"], **({"until": as_timestamp(catalog_until)} if catalog_until is not None else {})})
    items = conn.sql("SELECT entity_id, interacted FROM eval_items ORDER BY position").to_arrow_table()
    pairs = conn.sql(f"""
        SELECT ue.entity_id AS user_id, ei.position AS item, count(*) AS events,
               (epoch($c) - epoch(max(ev.ts))) / 86400.0 AS last_days
        FROM raw.events ev {entity_join('user', 'ev.user_id')} {entity_join('item', 'ev.item_id')}
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
    position = tensor_column(popularity, "position")
    popular[position] = tensor_column(popularity, "users", np.float32)
    recent[position] = tensor_column(popularity, "recent", np.float32)
    events[position] = tensor_column(popularity, "events", np.float32)
    return TrainingData(cutoff, tensor_column(items, "entity_id"), tensor_column(pairs, "user_id"), tensor_column(pairs, "item"),
                        tensor_column(pairs, "last_days", np.float32), tensor_column(pairs, "events"), popular, recent,
                        events, torch.from_numpy(items.column("interacted").to_numpy(zero_copy_only=False).astype(bool)))


def never_recommended(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, items: torch.Tensor) -> torch.Tensor:
    """Positions in `items` (item entity ids) of the spec's never_recommend items."""
    if not spec.items.never_recommend:
        return torch.empty(0, dtype=torch.long)
    ids = torch.tensor([r[0] for r in rows(conn, """
        SELECT entity_id FROM kg.entities WHERE entity_type = 'item' AND list_contains($never, natural_key)""",
                                           {"never": spec.items.never_recommend})], dtype=torch.long)
    return torch.nonzero(torch.isin(items, ids), as_tuple=True)[0]


def unsold_until(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, items: torch.Tensor,
                 cutoff: dt.date) -> torch.Tensor:
    """Positions in `items` (item entity ids) of the items with no positive event before `cutoff`.
    At a validation cutoff these are catalog items whose offer dates are unknown (the catalog has
    none): nothing says they were on sale in the window, so the ranker is not taught that they are
    not bought there."""
    ids = torch.tensor([r[0] for r in rows(conn, f"""
        SELECT DISTINCT ie.entity_id FROM raw.events ev {entity_join('item', 'ev.item_id')}
        WHERE ev.ts < $c AND ev.event_type = $pos""",
                                           {"c": as_timestamp(cutoff), "pos": spec.events.positive_event_type})],
                       dtype=torch.long)
    return torch.nonzero(~torch.isin(items, ids), as_tuple=True)[0]
