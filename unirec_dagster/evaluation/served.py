"""Score what is served: the rows of serving.recommendations for a partition, read as a website
would read them, on EVALUATION.md's protocol. Every evaluated user counts; a user without a row
scores zero on every metric."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pyarrow as pa
import torch

from unirec_dagster.evaluation.evaluate import SliceResult, slice_metrics
from unirec_dagster.evaluation.metrics import KS
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.history import TrainingData


def served_ranking(conn: duckdb.DuckDBPyConnection, partition: dt.date, users: torch.Tensor, data: TrainingData,
                   k: int = max(KS)) -> tuple[torch.Tensor, int]:
    """((len(users), k) candidate positions of the served items by rank, -1 where the partition has
    no row; the number of `users` without any row). `users` are entity ids."""
    conn.register("served_users", pa.table({"entity_id": users.numpy(), "row": np.arange(len(users))}))
    conn.register("served_items", pa.table({"entity_id": data.items.numpy(),
                                            "position": np.arange(data.num_items, dtype=np.int64)}))
    try:
        table = conn.sql("""
            SELECT su.row, r.rank, coalesce(si.position, -1) AS position
            FROM serving.recommendations r
            JOIN kg.entities ue ON ue.entity_type = 'user' AND ue.natural_key = r.user_id
            JOIN served_users su ON su.entity_id = ue.entity_id
            LEFT JOIN kg.entities ie ON ie.entity_type = 'item' AND ie.natural_key = r.item_id
            LEFT JOIN served_items si ON si.entity_id = ie.entity_id
            WHERE r.partition_date = $d AND r.rank BETWEEN 1 AND $k""",
                         params={"d": partition, "k": k}).to_arrow_table()
    finally:
        conn.unregister("served_users")
        conn.unregister("served_items")
    top = torch.full((len(users), k), -1, dtype=torch.long)
    row = torch.from_numpy(table.column("row").to_numpy().astype(np.int64))
    top[row, torch.from_numpy(table.column("rank").to_numpy().astype(np.int64)) - 1] = \
        torch.from_numpy(table.column("position").to_numpy().astype(np.int64))
    served = torch.zeros(len(users), dtype=torch.bool)
    served[row] = True
    return top, int((~served).sum())


def evaluate_served(conn: duckdb.DuckDBPyConnection, partition: dt.date, holdout: HoldoutPairs,
                    data: TrainingData) -> tuple[list[SliceResult], int]:
    """Metrics of the served partition per slice, and how many evaluated users it left without a row."""
    top, unserved = served_ranking(conn, partition, holdout.users, data)
    return slice_metrics(top, holdout, data), unserved
