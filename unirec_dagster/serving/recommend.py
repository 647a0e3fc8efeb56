"""Nightly batch recommendations and similar items, written as one replaced partition.

For run date D (cutoff C = D + 1 day): every user with any event before C gets K items. Users
with enough purchase history (and, when a look-back is set, an event within it) are ranked by the
served policy: the two-stage ranker (`ranking.two_stage`), or a scorer (a simple baseline or
a blend) when the quality gate chose one; the others get the items most bought recently within
their segment (the first user attribute, e.g. country) or overall. `reason` names the candidate
generator (two stages) or the signal (a scorer) that led the item, made concrete by `Explainer`.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, Field

from unirec_dagster.datasets import DatasetSpec, VerbsSpec
from unirec_dagster.graph import KnowledgeGraph, load_graph
from unirec_dagster.graph.build import CO_OCCURS
from unirec_dagster.history import never_recommended
from unirec_dagster.model.checkpoint import Checkpoint
from unirec_dagster.model.encoder import GraphEncoder, TextView, unseen_items
from unirec_dagster.ranking.scoring import Scorer, total
from unirec_dagster.ranking.topk import block_rows, interleave, new_item_slots, top_k, top_k_blocks
from unirec_dagster.ranking.two_stage import TwoStage
from unirec_dagster.serving.reasons import Explainer
from unirec_dagster.serving.shards import ScoredUsers, rank_in_shards
from unirec_dagster.settings import serving_shards
from unirec_dagster.warehouse import Params, ensure_schema, quote_path, rows, transaction


class ServingSettings(BaseModel):
    """What the nightly table holds; the recommendations asset's run config is this same model."""

    k: int = Field(50, ge=1, description="Recommendations per user.")
    lookback_days: int | None = Field(None, ge=1, description="When set, only users with an event in this many days "
                                      "before the cutoff are scored by the model; the others still get a list, "
                                      "the recent best sellers of their segment. Everyone with history is served.")
    min_history: int = Field(1, ge=1, description="Users with fewer positive events get the segment list.")
    exclude_purchased: bool = Field(True, description="Never recommend what the user already bought (the two-stage "
                                    "ranker always excludes them: it learned from new purchases only).")
    new_item_every: int = Field(0, ge=0, description="An override of where new items go: every n-th slot of a "
                                "list (ranks n, 2n, ...) goes to the user's best-scored item that nobody has "
                                "interacted with yet, when there are such items. 0 (the default): the ranker "
                                "places new items where it learned they belong.")
    shards: int = Field(default_factory=serving_shards, ge=1, description="Worker processes the "
                        "users are split over, each ranking its share on one thread (forked from the serving "
                        "process; joined in order, so the rows are the same). 1: one process with all threads. "
                        "Default: UNIREC_SERVING_SHARDS, else 1.")


@dataclass
class ServingStats:
    users: int
    model_users: int
    fallback_users: int
    rows: int
    seconds: float
    users_per_second: float


def score_users(scorer: Scorer, users: torch.Tensor, k: int, exclude_purchased: bool, explainer: Explainer,
                chunk: int | None = None, never: torch.Tensor | None = None, new_item_every: int = 0) -> ScoredUsers:
    """The top-K of `users` by the scorer's blend, in blocks of users, with reasons: the signal that
    contributed most to each item's score, made concrete by `explainer`. `never`: candidate
    positions recommended to nobody (scored -inf). With `new_item_every` = n, ranks n, 2n, ... hold
    the user's best items nobody has interacted with yet, in order, and the other ranks the best of
    the rest."""
    excluded = scorer.signals.exclusions(users) if exclude_purchased else (None, None)
    parts: dict[str, torch.Tensor] = {}
    new = torch.nonzero(~scorer.signals.data.interacted).flatten()
    if never is not None and len(new):
        new = new[~torch.isin(new, never)]
    slots, main_ranks, new_ranks = new_item_slots(k, new_item_every, len(new))
    if slots:  # the other slots are filled from the items with a history
        never = new if never is None else torch.cat([never, new])

    def block(rows_: slice) -> torch.Tensor:
        nonlocal parts
        parts = scorer.parts(users[rows_])
        return total(parts, rows_.stop - rows_.start)

    out = _Output(len(users), k, explainer.templates)
    chunk = chunk or block_rows(scorer.signals.data.num_items)
    for rows_, top_scores, top_items in top_k_blocks(block, len(users), k - slots, excluded[0], excluded[1],
                                                     chunk=chunk, never=never):
        n = rows_.stop - rows_.start
        if slots:  # nobody has bought a new item: no exclusions apply to these slots
            best = torch.topk(total({name: p[:, new] for name, p in parts.items()}, n), slots, dim=1)
            top_scores, top_items = interleave(top_scores, best.values, main_ranks, new_ranks), \
                interleave(top_items, new[best.indices.cpu()].to(top_items.device), main_ranks, new_ranks)
        chosen = torch.stack([p.expand(n, -1).gather(1, top_items.to(p.device)) for p in parts.values()], -1)
        top_items = top_items.cpu()
        out.put(rows_, top_scores.cpu(), top_items, *explainer.explain(users[rows_], top_items, chosen.argmax(-1).cpu(),
                                                                        list(parts), scorer.weights))
    return out.result()


def rank_two_stage(stage: TwoStage, users: torch.Tensor, k: int, explainer: Explainer,
                   new_item_every: int = 0) -> ScoredUsers:
    """The two-stage ranker's top-K of `users`, with reasons led by the generator that proposed each
    item; with `new_item_every` = n, ranks n, 2n, ... hold the ranker's best unsold items."""
    out = _Output(len(users), k, explainer.templates)
    for block in stage.top_k(users, k, new_item_every):
        out.put(block.rows, block.scores, block.items, *explainer.explain(users[block.rows], block.items, block.lead,
                                                                          block.leads))
    return out.result()


def rank_users(policy: Scorer | TwoStage, users: torch.Tensor, settings: ServingSettings,
               graph: KnowledgeGraph | None, never: torch.Tensor, verbs: VerbsSpec = VerbsSpec()) -> ScoredUsers:
    """The served policy's top-K of `users`: the two-stage ranker, or a scorer's blend; reasons in
    the dataset's `verbs`."""
    if isinstance(policy, TwoStage):
        explainer = Explainer(policy.inputs.signals, policy.inputs.embeddings, graph, verbs)
        return rank_two_stage(policy, users, settings.k, explainer, settings.new_item_every)
    return score_users(policy, users, settings.k, settings.exclude_purchased,
                       Explainer(policy.signals, policy.embeddings, graph, verbs), never=never,
                       new_item_every=settings.new_item_every)


class _Output:
    """The top-K of every user, written block by block into tensors allocated once: joining the
    blocks at the end held two copies of the whole night's lists (0.7 GB at 200,000 users)."""

    def __init__(self, users: int, k: int, templates: list[str]):
        self.users, self.k, self.templates = users, k, templates
        self.columns: list[torch.Tensor] | None = None   # scores, items, reasons, anchors, values
        self.filled = 0

    def put(self, rows: slice, *block: torch.Tensor) -> None:
        if self.columns is None:
            self.columns = [torch.empty((self.users, *column.shape[1:]), dtype=column.dtype) for column in block]
        for column, part in zip(self.columns, block):
            column[rows] = part
        self.filled += rows.stop - rows.start

    def result(self) -> ScoredUsers:
        if self.columns is None:
            empty = torch.empty((0, self.k), dtype=torch.long)
            return ScoredUsers(torch.empty((0, self.k)), empty, empty, empty, empty, self.templates)
        if self.filled != self.users:  # never expected: a block went missing, and its rows would be garbage
            raise RuntimeError(f"ranked {self.filled:,} of {self.users:,} users")
        scores, items, reasons, anchors, values = self.columns
        return ScoredUsers(scores, items, reasons, anchors, values, self.templates)


def write_recommendations(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date,
                          policy: Scorer | TwoStage, model_version: str, run_id: str | None,
                          settings: ServingSettings, graph: KnowledgeGraph | None = None) -> ServingStats:
    """Replace the partition `run_date` of serving.recommendations: K items for every user with
    any event before the cutoff (the end of run_date), in one transaction, ranked by `policy`. With
    `graph`, reasons also name an attribute or keyword the item shares with its anchor."""
    started = time.perf_counter()
    ensure_schema(conn)
    k, exclude_purchased = settings.k, settings.exclude_purchased
    cutoff = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time())
    data = (policy.inputs.signals if isinstance(policy, TwoStage) else policy.signals).data
    since = cutoff - dt.timedelta(days=settings.lookback_days) if settings.lookback_days else dt.datetime.min
    users = conn.sql("""
        SELECT e.entity_id, ev.user_id, ev.last_event >= $since AS recent
        FROM (SELECT user_id, max(ts) AS last_event FROM raw.events WHERE ts < $c GROUP BY 1) ev
        JOIN kg.entities e ON e.entity_type = 'user' AND e.natural_key = ev.user_id ORDER BY 1""",
                     params={"since": since, "c": cutoff}).to_arrow_table()
    user_ids = torch.from_numpy(users.column("entity_id").to_numpy().astype(np.int64))
    recent = torch.from_numpy(users.column("recent").to_numpy(zero_copy_only=False).astype(bool))
    modelled = (data.positive_events_of(user_ids) >= settings.min_history) & recent
    scored_users = user_ids[modelled]
    never = never_recommended(conn, spec, data.items)
    top = rank_in_shards(lambda part: rank_users(policy, part, settings, graph, never, spec.events.verbs),
                         scored_users, settings.shards)
    anchors = torch.where(top.anchors >= 0, data.items[top.anchors.clamp(min=0)], -1)
    table = _ranked_table(scored_users, top.scores, data.items[top.items],
                          reason=np.array(top.templates, dtype=object)[top.reasons.numpy()],
                          anchor=anchors.numpy(), shared=top.values.numpy())
    fallback_users = pa.table({"user_id": users.column("user_id").filter(pa.array((~modelled).numpy()))})
    with transaction(conn):
        conn.execute("DELETE FROM serving.recommendations WHERE partition_date = $d", {"d": run_date})
        conn.register("new_recommendations", table)
        # The reason's {anchor} and {value} become the anchor item's title and the shared value.
        conn.execute("""
            INSERT INTO serving.recommendations
            SELECT $d, u.natural_key, i.natural_key, r.rank, r.score,
                   replace(replace(r.reason, '{anchor}', coalesce(a.display_name, '')),
                           '{value}', coalesce(v.display_name, '')), $v, $run, now()
            FROM new_recommendations r JOIN kg.entities u ON u.entity_id = r.source
            JOIN kg.entities i ON i.entity_id = r.target
            LEFT JOIN kg.entities a ON a.entity_id = r.anchor LEFT JOIN kg.entities v ON v.entity_id = r.shared""",
                     {"d": run_date, "v": model_version, "run": run_id})
        conn.unregister("new_recommendations")
        conn.register("fallback_users", fallback_users)
        _insert_fallback(conn, spec, run_date, cutoff, k, model_version, run_id, exclude_purchased)
        conn.unregister("fallback_users")
        written = rows(conn, "SELECT count(*) FROM serving.recommendations WHERE partition_date = $d", {"d": run_date})[0][0]
    seconds = time.perf_counter() - started
    return ServingStats(len(user_ids), len(scored_users), int((~modelled).sum()), written, seconds,
                        len(user_ids) / max(seconds, 1e-9))


def _ranked_table(sources: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor, **extra: np.ndarray) -> pa.Table:
    """One row per (source, rank) of a (len(sources), k) top-K of target entity ids, without the
    -inf entries that fill a list when fewer than k targets were left after exclusions."""
    n, k = scores.shape
    flat_scores = scores.reshape(-1).double().numpy()
    keep = np.isfinite(flat_scores)
    columns = {"source": np.repeat(sources.numpy(), k), "target": targets.reshape(-1).numpy(),
               "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n), "score": flat_scores,
               **{name: values.reshape(-1) for name, values in extra.items()}}
    return pa.table({name: values[keep] for name, values in columns.items()})


def _insert_fallback(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, cutoff: dt.datetime,
                     k: int, model_version: str, run_id: str | None, exclude_purchased: bool) -> None:
    """Recently popular items within the user's segment (first user attribute) when the data has
    one, topped up with the overall recently popular items."""
    segment = next(iter(spec.users.attributes), None) if spec.users else None
    p = Params()
    seg = f"users.attributes[{p.add(segment)}][1]" if segment else "NULL"
    among = p.add(f"popular recently among {spec.events.verbs.person} in ")
    conn.execute(f"""
        INSERT INTO serving.recommendations
        WITH recent AS (
            SELECT ev.item_id, {seg} AS segment, count(*) AS n FROM raw.events ev
            LEFT JOIN raw.users users ON users.user_id = ev.user_id
            WHERE ev.ts >= {p.add(cutoff - dt.timedelta(days=30), 'TIMESTAMP')} AND ev.ts < {p.add(cutoff, 'TIMESTAMP')}
              AND ev.event_type = {p.add(spec.events.positive_event_type)}
            GROUP BY ALL
        ),
        overall AS (SELECT item_id, NULL AS segment, sum(n) AS n FROM recent GROUP BY 1),
        candidates AS (
            SELECT f.user_id, r.item_id, r.n + 1e9 AS score, {among} || r.segment AS reason
            FROM fallback_users f LEFT JOIN raw.users users ON users.user_id = f.user_id
            JOIN recent r ON r.segment = {seg}
            UNION ALL
            SELECT f.user_id, o.item_id, o.n, 'popular recently' FROM fallback_users f, overall o
        ),
        allowed AS (
            SELECT * FROM candidates c
            WHERE NOT list_contains({p.add(spec.items.never_recommend, 'VARCHAR[]')}, c.item_id)
              AND (NOT {p.add(exclude_purchased, 'BOOLEAN')} OR NOT EXISTS (
                SELECT 1 FROM raw.events ev WHERE ev.user_id = c.user_id AND ev.item_id = c.item_id
                  AND ev.ts < {p.add(cutoff, 'TIMESTAMP')} AND ev.event_type = {p.add(spec.events.positive_event_type)}))
        ),
        best AS (SELECT user_id, item_id, arg_max(reason, score) AS reason, max(score) AS score FROM allowed GROUP BY 1, 2)
        SELECT {p.add(run_date, 'DATE')}, user_id, item_id,
               row_number() OVER (PARTITION BY user_id ORDER BY score DESC, item_id) AS rank,
               CASE WHEN score >= 1e9 THEN score - 1e9 ELSE score END, reason, {p.add(model_version)}, {p.add(run_id)}, now()
        FROM best QUALIFY rank <= {p.add(k, 'BIGINT')}""", p)


def published_dir(warehouse: Path, table: str = "recommendations") -> Path:
    """Where a serving table's partitions are published as Parquet, beside the warehouse file:
    data/warehouse.duckdb -> data/warehouse.serving/<table>/<date>.parquet."""
    return Path(warehouse).with_suffix(".serving") / table


def publish_recommendations(conn: duckdb.DuckDBPyConnection, run_date: dt.date, warehouse: Path) -> Path:
    """Write the partition, with item titles, to a Parquet file that readers use while a run holds
    the warehouse (DuckDB lets one process open a file for writing and no one else meanwhile),
    and beside it the night's co-purchase neighbours (the KG's item_co_occurs of the same snapshot,
    which the read API uses to move up what goes with a purchase made today). Each is written to a
    temporary name and renamed, co-purchase first, so a reader that sees the night sees both."""
    _publish(conn, """
        SELECT h.natural_key AS item_id, t.natural_key AS other_id, tr.weight
        FROM kg.triples tr JOIN kg.relations r USING (relation_id)
        JOIN kg.entities h ON h.entity_id = tr.head_id JOIN kg.entities t ON t.entity_id = tr.tail_id
        WHERE r.name = $relation AND tr.snapshot_date = $d ORDER BY item_id, weight DESC, other_id""",
             {"d": run_date, "relation": CO_OCCURS}, run_date, published_dir(warehouse, "co_purchase"))
    return _publish(conn, """
        SELECT r.*, i.title FROM serving.recommendations r LEFT JOIN raw.items i USING (item_id)
        WHERE r.partition_date = $d ORDER BY r.user_id, r.rank""", {"d": run_date}, run_date, published_dir(warehouse))


def publish_similar_items(conn: duckdb.DuckDBPyConnection, run_date: dt.date, warehouse: Path) -> Path:
    """The run date's similar items, with titles, as Parquet beside the warehouse (for the read API)."""
    return _publish(conn, """
        SELECT s.item_id, s.similar_item_id, s.rank, s.score, s.model_version, i.title
        FROM serving.similar_items s LEFT JOIN raw.items i ON i.item_id = s.similar_item_id
        WHERE s.run_date = $d ORDER BY s.item_id, s.rank""", {"d": run_date}, run_date,
                    published_dir(warehouse, "similar_items"))


def _publish(conn: duckdb.DuckDBPyConnection, query: str, params: dict, run_date: dt.date, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{run_date.isoformat()}.parquet"
    staging = folder / f".{final.name}.{os.getpid()}.tmp"
    conn.execute(f"COPY ({query}) TO {quote_path(staging)} (FORMAT parquet)", params)
    os.replace(staging, final)
    return final


def preview(conn: duckdb.DuckDBPyConnection, run_date: dt.date, users: int = 3, k: int = 5) -> list[tuple]:
    """(user, rank, item, title, reason) of the first `k` items of a few users of the partition: the
    most active users with a personalised list, so the preview shows what the ranker does."""
    return rows(conn, """
        WITH chosen AS (
            SELECT r.user_id FROM serving.recommendations r
            JOIN (SELECT user_id, count(*) AS events FROM raw.events GROUP BY 1) e USING (user_id)
            WHERE r.partition_date = $d AND r.rank = 1 AND r.reason NOT LIKE 'popular recently among %'
            ORDER BY e.events DESC, r.user_id LIMIT $u)
        SELECT r.user_id, r.rank, r.item_id, coalesce(i.title, ''), r.reason
        FROM serving.recommendations r JOIN chosen USING (user_id) LEFT JOIN raw.items i USING (item_id)
        WHERE r.partition_date = $d AND r.rank <= $k ORDER BY r.user_id, r.rank""",
                {"d": run_date, "u": users, "k": k})


def users_short_of_k(conn: duckdb.DuckDBPyConnection, run_date: dt.date, k: int) -> int:
    """Users of the partition with fewer than k recommendations (a catalog smaller than k after
    their purchases are excluded)."""
    return rows(conn, """SELECT count(*) FROM (SELECT user_id FROM serving.recommendations
                         WHERE partition_date = $d GROUP BY 1 HAVING count(*) < $k)""", {"d": run_date, "k": k})[0][0]


def refresh_similar_items(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date,
                          checkpoint: Checkpoint, text: TextView | None) -> tuple[int, int]:
    """Replace the partition `run_date` of serving.similar_items from a fine-tuned checkpoint over
    the KG of `run_date`; returns (rows written, items)."""
    graph = load_graph(conn, run_date)
    model = checkpoint.build_model(graph.num_entities, len(graph.relation_names))
    items, vectors = similar_item_vectors(model, graph, text)
    return write_similar_items(conn, spec, run_date, items, vectors, checkpoint.version), len(items)


def similar_item_vectors(model: GraphEncoder, graph: KnowledgeGraph,
                         text: TextView | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(item entity ids, their vectors in the model's space). Items without any user->item edge have
    no collaborative signal: they are placed through their aligned text view instead."""
    items = graph.nodes_of_type("item")
    vectors = model.embed_graph(graph, text)[items].cpu()
    if text is None or not model.text_dim or not len(text.ids):
        return items, vectors
    position = torch.full((graph.num_entities,), -1, dtype=torch.long)
    position[items] = torch.arange(len(items))
    cold = torch.isin(text.ids, unseen_items(graph)) & (position[text.ids] >= 0)  # over the rows of the text view
    if cold.any():
        vectors[position[text.ids[cold]]] = model.cold_item_embedding(text.vectors[cold]).cpu()
    return items, vectors


def write_similar_items(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, item_ids: torch.Tensor,
                        item_vectors: torch.Tensor, model_version: str, k: int = 20) -> int:
    """Cosine top-k neighbours of every item (entity ids `item_ids`, rows of `item_vectors`); the
    spec's never_recommend items are nobody's neighbour."""
    vectors = torch.nn.functional.normalize(item_vectors.float(), dim=-1)
    self_rows = torch.arange(len(item_ids))
    scores, neighbours = top_k(lambda r: vectors[r] @ vectors.T, len(item_ids), k, self_rows, self_rows,
                               block_rows(len(item_ids)), never=never_recommended(conn, spec, item_ids))
    table = _ranked_table(item_ids, scores, item_ids[neighbours])
    with transaction(conn):
        conn.execute("DELETE FROM serving.similar_items WHERE run_date = $d", {"d": run_date})
        conn.register("new_similar", table)
        conn.execute("""
            INSERT INTO serving.similar_items
            SELECT a.natural_key, b.natural_key, s.rank, s.score, $v, $d, now() FROM new_similar s
            JOIN kg.entities a ON a.entity_id = s.source JOIN kg.entities b ON b.entity_id = s.target""",
                     {"v": model_version, "d": run_date})
        conn.unregister("new_similar")
    return len(table)
