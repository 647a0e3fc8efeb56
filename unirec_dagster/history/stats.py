"""Per-item, per-user and per-segment statistics at a cutoff C, from raw.events before C only: what
the ranker's features read beside the models' scores.

Items are the candidate positions of a `TrainingData`, users KG entity ids. A value that cannot be
known is NaN, not zero (an item nobody has bought has no age and no last sale; a year-ago window
the data does not reach is unknown), so the ranker can tell "never" from "none".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.history.data import TrainingData, as_timestamp, entity_join
from unirec_dagster.warehouse import Params, rows

BUYER_WINDOWS = (7, 30, 90)       # days: distinct buyers of an item in the last d days
ADOPTER_DAYS = 30                 # buyers whose first purchase of the item falls in the last 30 days
SEGMENT_DAYS = 90                 # the window of segment popularity
YEAR_DAYS, YEAR_WINDOW = 364, 14  # the same weekdays 52 weeks earlier, two weeks from there
ITEM_COUNTS = ("buyers_all", *(f"buyers_{d}" for d in BUYER_WINDOWS), "adopters")
ITEM_MEASURES = ("age_days", "since_sale_days", "price")
USER_MEASURES = ("last_days", "first_days", "positives", "baskets", "distinct_items", "price")


@dataclass
class CutoffStats:
    """Statistics at `cutoff`. `items[name]` is (I,) over the candidate positions; `users[name]` is
    (len(user_ids),) over `user_ids` (sorted entity ids); `segment_share` (segments + 1, I) is the
    share of a segment's recent buyers who bought each item, its last row over all segments (for
    users without one)."""

    cutoff: dt.date
    items: dict[str, torch.Tensor]
    user_ids: torch.Tensor
    users: dict[str, torch.Tensor]
    user_segment: torch.Tensor      # (len(user_ids),) row of segment_share
    segment_share: torch.Tensor
    segments: list[str]

    def without_history(self, positions: torch.Tensor) -> CutoffStats:
        """The statistics as if the items at `positions` had never been bought (`TrainingData.without_history`):
        no buyers, no age, no last sale, no segment share; their price stays (a catalog lists one).
        The users' own figures are kept: they describe the user, not the item."""
        items = {name: value.clone() for name, value in self.items.items()}
        for name in (*ITEM_COUNTS, "buyers_year_ago"):
            items[name][positions] = torch.where(items[name][positions].isnan(), float("nan"), 0.0)
        for name in ("age_days", "since_sale_days"):
            items[name][positions] = float("nan")
        share = self.segment_share.clone()
        share[:, positions] = 0.0
        return CutoffStats(self.cutoff, items, self.user_ids, self.users, self.user_segment, share, self.segments)

    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """Rows of `users` (entity ids) in user_ids; -1 for users without any event before the cutoff."""
        at = torch.searchsorted(self.user_ids, users).clamp(max=max(len(self.user_ids) - 1, 0))
        found = (self.user_ids[at] == users) if len(self.user_ids) else torch.zeros(len(users), dtype=torch.bool)
        return torch.where(found, at, -1)

    def of_users(self, name: str, users: torch.Tensor) -> torch.Tensor:
        at = self.user_rows(users)
        return torch.where(at >= 0, self.users[name][at.clamp(min=0)], float("nan"))

    def segment_of(self, users: torch.Tensor) -> torch.Tensor:
        """Rows of segment_share for `users`."""
        at = self.user_rows(users)
        return torch.where(at >= 0, self.user_segment[at.clamp(min=0)], len(self.segments))


def _dense(table: pa.Table, index: np.ndarray, size: int, name: str, missing: float) -> torch.Tensor:
    """Column `name` of `table` placed at `index` of a (size,) tensor; absent rows and NULLs are `missing`."""
    out = torch.full((size,), missing)
    values = torch.from_numpy(table.column(name).to_numpy(zero_copy_only=False).astype(np.float32))
    out[torch.from_numpy(index.astype(np.int64))] = values.nan_to_num(nan=missing) if missing == 0 else values
    return out


def _item_table(conn: duckdb.DuckDBPyConnection, cutoff: dt.datetime, positive: str) -> pa.Table:
    p = Params()
    c, pos = p.add(cutoff, "TIMESTAMP"), p.add(positive)
    windows = ", ".join(f"count(DISTINCT ev.user_id) FILTER (WHERE ev.event_type = {pos} AND ev.ts >= {c} - "
                        f"INTERVAL {d} DAY) AS buyers_{d}" for d in BUYER_WINDOWS)
    year_from = p.add(cutoff - dt.timedelta(days=YEAR_DAYS), "TIMESTAMP")
    year_to = p.add(cutoff - dt.timedelta(days=YEAR_DAYS - YEAR_WINDOW), "TIMESTAMP")
    return conn.sql(f"""
        WITH firsts AS (
            SELECT item_id, user_id, min(ts) AS first_purchase FROM raw.events
            WHERE ts < {c} AND event_type = {pos} GROUP BY 1, 2
        ),
        adopters AS (
            SELECT item_id, count(*) FILTER (WHERE first_purchase >= {c} - INTERVAL {ADOPTER_DAYS} DAY) AS adopters
            FROM firsts GROUP BY 1
        ),
        per_item AS (
            SELECT ev.item_id, (epoch({c}) - epoch(min(ev.ts))) / 86400.0 AS age_days,
                   (epoch({c}) - epoch(max(ev.ts) FILTER (WHERE ev.event_type = {pos}))) / 86400.0 AS since_sale_days,
                   count(DISTINCT ev.user_id) FILTER (WHERE ev.event_type = {pos}) AS buyers_all, {windows},
                   count(DISTINCT ev.user_id) FILTER (WHERE ev.event_type = {pos} AND ev.ts >= {year_from}
                                                      AND ev.ts < {year_to}) AS buyers_year_ago,
                   median(ev.price) FILTER (WHERE ev.event_type = {pos} AND ev.price > 0) AS price
            FROM raw.events ev WHERE ev.ts < {c} GROUP BY 1
        )
        SELECT si.position, pi.* EXCLUDE (item_id, price),
               coalesce(pi.price, ri.price) AS price,  -- a catalog item's listed price before any sale
               coalesce(a.adopters, 0) AS adopters
        FROM stats_items si JOIN kg.entities ie ON ie.entity_id = si.entity_id
        LEFT JOIN per_item pi ON pi.item_id = ie.natural_key
        LEFT JOIN raw.items ri ON ri.item_id = ie.natural_key
        LEFT JOIN adopters a ON a.item_id = ie.natural_key""", params=p).to_arrow_table()


def _user_table(conn: duckdb.DuckDBPyConnection, cutoff: dt.datetime, positive: str, segment: str | None) -> pa.Table:
    p = Params()
    c, pos = p.add(cutoff, "TIMESTAMP"), p.add(positive)
    seg = f"any_value(u.attributes[{p.add(segment)}][1])" if segment else "NULL::VARCHAR"
    return conn.sql(f"""
        SELECT ue.entity_id, (epoch({c}) - epoch(max(ev.ts))) / 86400.0 AS last_days,
               (epoch({c}) - epoch(min(ev.ts))) / 86400.0 AS first_days,
               count(*) FILTER (WHERE ev.event_type = {pos}) AS positives,
               count(DISTINCT coalesce(ev.session_id, ev.ts::DATE::VARCHAR)) FILTER (WHERE ev.event_type = {pos})
                   AS baskets,
               count(DISTINCT ev.item_id) FILTER (WHERE ev.event_type = {pos}) AS distinct_items,
               median(ev.price) FILTER (WHERE ev.event_type = {pos} AND ev.price > 0) AS price,
               {seg} AS segment
        FROM raw.events ev {entity_join('user', 'ev.user_id')} LEFT JOIN raw.users u ON u.user_id = ev.user_id
        WHERE ev.ts < {c} GROUP BY 1 ORDER BY 1""", params=p).to_arrow_table()


def _segment_table(conn: duckdb.DuckDBPyConnection, cutoff: dt.datetime, positive: str, segment: str) -> pa.Table:
    """Distinct recent buyers per (segment, item position), and per segment."""
    p = Params()
    c, pos, seg = p.add(cutoff, "TIMESTAMP"), p.add(positive), p.add(segment)
    return conn.sql(f"""
        SELECT u.attributes[{seg}][1] AS segment, si.position, count(DISTINCT ev.user_id) AS buyers
        FROM raw.events ev JOIN raw.users u ON u.user_id = ev.user_id
        {entity_join('item', 'ev.item_id')} JOIN stats_items si ON si.entity_id = ie.entity_id
        WHERE ev.ts < {c} AND ev.ts >= {c} - INTERVAL {SEGMENT_DAYS} DAY AND ev.event_type = {pos}
        GROUP BY GROUPING SETS ((1, 2), (1))""", params=p).to_arrow_table()


def load_stats(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, data: TrainingData) -> CutoffStats:
    """The statistics at data.cutoff for data's candidate items and every user with an event before it."""
    cutoff = as_timestamp(data.cutoff)
    positive = spec.events.positive_event_type
    segment = next(iter(spec.users.attributes), None) if spec.users else None
    num_items = data.num_items
    conn.register("stats_items", pa.table({"entity_id": data.items.numpy(),
                                           "position": np.arange(num_items, dtype=np.int64)}))
    try:
        items = _item_table(conn, cutoff, positive)
        by_segment = _segment_table(conn, cutoff, positive, segment) if segment else None
        reaches_year = rows(conn, "SELECT min(ts) <= $y FROM raw.events WHERE ts < $c",
                            {"y": cutoff - dt.timedelta(days=YEAR_DAYS), "c": cutoff})[0][0]
    finally:
        conn.unregister("stats_items")
    users = _user_table(conn, cutoff, positive, segment)

    position = items.column("position").to_numpy()
    item_stats = {name: _dense(items, position, num_items, name, 0.0) for name in ITEM_COUNTS}
    item_stats |= {name: _dense(items, position, num_items, name, float("nan")) for name in ITEM_MEASURES}
    item_stats["buyers_year_ago"] = (_dense(items, position, num_items, "buyers_year_ago", 0.0) if reaches_year
                                     else torch.full((num_items,), float("nan")))

    user_ids = torch.from_numpy(users.column("entity_id").to_numpy().astype(np.int64))
    order = np.arange(len(user_ids))
    user_stats = {name: _dense(users, order, len(user_ids), name, float("nan")) for name in USER_MEASURES}
    values = users.column("segment").to_pylist()
    segments = sorted({v for v in values if v is not None})
    index = {name: i for i, name in enumerate(segments)}
    user_segment = torch.tensor([index.get(v, len(segments)) for v in values], dtype=torch.long)
    return CutoffStats(data.cutoff, item_stats, user_ids, user_stats, user_segment,
                       _segment_share(by_segment, index, num_items), segments)


def _segment_share(table: pa.Table | None, index: dict[str, int], num_items: int) -> torch.Tensor:
    """(segments + 1, I): each segment's recent buyers of the item over its recent buyers; the last
    row does the same over everyone."""
    share = torch.zeros(len(index) + 1, num_items)
    if table is None or not table.num_rows:
        return share
    seg = table.column("segment").to_pylist()
    position = table.column("position").to_numpy(zero_copy_only=False)
    buyers = torch.from_numpy(table.column("buyers").to_numpy().astype(np.float32))
    per_item = ~np.isnan(position.astype(np.float64))
    rows_ = torch.tensor([index.get(s, len(index)) for s in seg], dtype=torch.long)
    items = torch.from_numpy(np.nan_to_num(position.astype(np.float64)).astype(np.int64))
    mask = torch.from_numpy(per_item)
    counts = torch.zeros(len(index) + 1, num_items)
    counts.index_put_((rows_[mask], items[mask]), buyers[mask], accumulate=True)
    totals = torch.zeros(len(index) + 1).index_add_(0, rows_[~mask], buyers[~mask])
    share[:-1] = counts[:-1] / totals[:-1].clamp(min=1).unsqueeze(1)
    share[-1] = counts.sum(0) / totals.sum().clamp(min=1)
    return share
