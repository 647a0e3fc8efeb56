"""The first stage: candidate items per user from several generators, and the features the second
stage (the learned ranker, `ranking.ranker`) reads for every (user, candidate) pair.

Generators, each a top-N over the catalog with the user's purchases excluded:
- `model`: the fine-tuned graph model's dot product;
- `ease`, `rp3beta`: the classic item-item peers (`ranking.classic`);
- `co_purchase`: co-purchase neighbours of the user's past items;
- `trending`: items with the most new buyers (first purchase) lately, the same for everyone;
- `new_items`: catalog items nobody has bought yet, placed by the graph model (their text and
  attributes) or, without one, by text similarity to the user's past items.

Everything is computed for a block of users at once from dense (users x items) score blocks, so
one block's memory is bounded by `ranking.topk.BLOCK_CELLS`-sized tensors, whatever the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, Field

from unirec_dagster.history import CutoffStats
from unirec_dagster.ranking.content import ItemContent
from unirec_dagster.ranking.scoring import impute_new_item_norms, standardize_
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.topk import top_places

GENERATORS = ("model", "ease", "rp3beta", "co_purchase", "trending", "new_items")
SCORED = ("model", "ease", "rp3beta", "co_purchase")  # generators whose per-user score is a feature too


class CandidateConfig(BaseModel):
    """How many candidates each generator proposes per user (0 turns one off)."""

    model: int = Field(200, ge=0, description="Top items by the fine-tuned graph model.")
    ease: int = Field(200, ge=0, description="Top items by EASE^R.")
    rp3beta: int = Field(150, ge=0, description="Top items by RP3beta.")
    co_purchase: int = Field(100, ge=0, description="Top co-purchase neighbours of the user's past items.")
    trending: int = Field(100, ge=0, description="Items with the most new buyers in the last 30 days.")
    new_items: int = Field(20, ge=0, description="Catalog items nobody has bought yet, best placed for the user.")

    def size(self, generator: str) -> int:
        return getattr(self, generator)


@dataclass
class CutoffInputs:
    """Everything the two stages read at one cutoff."""

    signals: Signals
    stats: CutoffStats
    content: ItemContent
    embeddings: torch.Tensor | None = None    # (entities, dim) the fine-tuned graph model's, or None

    def __post_init__(self):
        data = self.signals.data
        self.item_vectors = None
        if self.embeddings is not None:
            items = self.embeddings[data.items.to(self.embeddings.device)].float().cpu()
            self.item_vectors = impute_new_item_norms(items, data.interacted)
        self.new_items = torch.nonzero(~data.interacted).flatten()
        trending = torch.log1p(self.stats.items["adopters"]) + 1e-3 * torch.log1p(self.stats.items["buyers_30"])
        self.trending = trending.masked_fill(~data.interacted, float("-inf"))   # (I,) new items are not "trending"
        # The trending list is the same for everyone: ordered once a night, not per block of users
        order = torch.argsort(self.trending, descending=True, stable=True)
        self.trending_order = order[torch.isfinite(self.trending[order])]


@dataclass
class Block:
    """Dense (users, items) signals of one block of users, and the items they may not be offered."""

    users: torch.Tensor
    scores: dict[str, torch.Tensor]     # generator/feature name -> (users, items)
    excluded: torch.Tensor              # (users, items) bool


@dataclass
class Candidates:
    """(n,) pairs of a block: the row of the user in the block, the candidate position, and the pair's
    rank in each generator's list, (n, generators), size + 1 where the generator did not propose it."""

    rows: torch.Tensor
    items: torch.Tensor
    ranks: torch.Tensor
    generators: list[str]

    def lead(self, sizes: dict[str, int]) -> torch.Tensor:
        """(n,) index into `generators` of the generator that ranked each pair best, relative to its list."""
        relative = self.ranks / torch.tensor([float(sizes[g]) for g in self.generators]).clamp(min=1)
        return relative.argmin(1)


def score_block(inputs: CutoffInputs, users: torch.Tensor, never: torch.Tensor | None = None,
                withheld: torch.Tensor | None = None) -> Block:
    """The block's dense signals. The generators' scores (`SCORED`) are standardised per user over
    the catalog here, in place: the ranker reads them so, and a row's order is unchanged. `never`
    (item positions) is offered to nobody, `withheld` (keys user entity id x items + item
    position) to its user only: excluded before the generators, their lists keep their length."""
    signals, content = inputs.signals, inputs.content
    history = signals.history_of(users)
    scores = {"ease": signals.ease_scores(users, history), "rp3beta": signals.rp3beta_scores(users, history),
              "co_purchase": signals.knn_scores(users, history), "text_similarity": content.text_similarity(history),
              "attribute_overlap": content.attribute_overlap(history)}
    if inputs.item_vectors is not None:
        scores["model"] = inputs.embeddings[users.to(inputs.embeddings.device)].float().cpu() @ inputs.item_vectors.T
    for g in SCORED:
        if g in scores:
            standardize_(scores[g])
    excluded = history.to_dense() > 0
    if never is not None and len(never):
        excluded[:, never] = True
    if withheld is not None and len(withheld):
        excluded.view(-1)[_cells_of(users, withheld, excluded.shape[1])] = True
    return Block(users, scores, excluded)


def _cells_of(users: torch.Tensor, keys: torch.Tensor, num_items: int) -> torch.Tensor:
    """Flat (row x items + item) cells of a block of `users` for the `keys` (user entity id x items +
    item position) that belong to its users."""
    owners = keys // num_items
    mine = torch.isin(owners, users)
    sorted_users, order = users.sort()
    rows = order[torch.searchsorted(sorted_users, owners[mine])]
    return rows * num_items + keys[mine] % num_items


def active_generators(config: CandidateConfig, has_model: bool) -> list[str]:
    """The generators with a list size; every one keeps its rank column even when it proposes nothing
    at some cutoff (no new items), so the ranker's features are the same at training and serving."""
    return [g for g in GENERATORS if config.size(g) and (g != "model" or has_model)]


def generate(inputs: CutoffInputs, block: Block, config: CandidateConfig) -> Candidates:
    """The union of every generator's top list for each user of the block. The generators' score
    blocks get the excluded items set to -inf in place (the features only read candidates)."""
    n, num_items = block.excluded.shape
    generators = active_generators(config, "model" in block.scores)
    tops: dict[str, torch.Tensor] = {}   # generator -> (n, list size) candidate positions, -1 past the list's end
    for g in generators:
        size = min(config.size(g), num_items)
        if g == "new_items":
            tops[g] = _new_item_list(inputs, block, config.new_items)
        elif g == "trending":
            tops[g] = _first_allowed(inputs.trending_order, block.excluded, size)
        else:
            tops[g] = top_places(block.scores[g].masked_fill_(block.excluded, float("-inf")), size)
    # Each list's places past its end (-1) point at one spare column, past the catalog: the union
    # and the rank columns are then gathers and scatters along rows, not pairs of index tensors.
    spare = num_items
    places = {g: torch.where(top >= 0, top, spare) for g, top in tops.items()}
    chosen = torch.zeros(n, num_items + 1, dtype=torch.bool)
    for at in places.values():
        chosen.scatter_(1, at, True)
    chosen[:, spare] = False
    rows, items = torch.nonzero(chosen, as_tuple=True)
    # One dense map from (user, item) to the pair's index (-1 for none), read where the lists point:
    # each generator's ranks are then scattered straight into the pairs' rank column.
    pair_of = torch.full((n, num_items + 1), -1, dtype=torch.int32)
    pair_of.view(-1)[rows * (num_items + 1) + items] = torch.arange(len(rows), dtype=torch.int32)
    ranks = torch.empty(len(generators), len(rows))   # filled a generator at a time, returned (pairs, generators)
    for j, g in enumerate(generators):
        pair = pair_of.gather(1, places[g])
        listed = pair >= 0
        ranks[j] = float(config.size(g) + 1)
        ranks[j, pair[listed].long()] = torch.arange(1, pair.shape[1] + 1, dtype=torch.float32).expand_as(pair)[listed]
    ranks = ranks.T.contiguous()
    return Candidates(rows, items, ranks, generators)


def _new_item_list(inputs: CutoffInputs, block: Block, size: int) -> torch.Tensor:
    """(n, size) catalog items nobody has bought yet, best placed for each user first: by the graph
    model (their text and attributes), else by text similarity to the user's past items."""
    n, new = block.excluded.shape[0], inputs.new_items
    if not len(new) or not size:
        return torch.full((n, 0), -1, dtype=torch.long)
    placed_by = block.scores.get("model", block.scores["text_similarity"])[:, new]
    top = top_places(placed_by.masked_fill(block.excluded[:, new], float("-inf")), min(size, len(new)))
    return torch.where(top >= 0, new[top.clamp(min=0)], -1)


def _first_allowed(order: torch.Tensor, excluded: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size) the first `size` items of the shared list `order` that each row may be offered, -1
    past its end: a slice of one ordered list instead of a top-K over the catalog per user."""
    n = excluded.shape[0]
    out = torch.full((n, size), -1, dtype=torch.long)
    if not n or not len(order):
        return out
    head = order[:size + int(excluded.sum(1).max())]   # enough for the row with the most exclusions
    allowed = ~excluded[:, head]
    place = allowed.cumsum(1, dtype=torch.int32)
    r, c = torch.nonzero(allowed & (place <= size), as_tuple=True)
    out[r, place[r, c] - 1] = head[c]
    return out


def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(x.clamp(min=0))


def feature_names(config: CandidateConfig, has_model: bool) -> list[str]:
    """The columns of `pair_features`, in order."""
    scored = [g for g in SCORED if g != "model" or has_model]
    return ([f"{g}_score" for g in scored] + [f"{g}_rank" for g in active_generators(config, has_model)]
            + ["text_similarity", "attribute_overlap", "segment_share", "price_gap"]
            + [f"item_{name}" for name in ITEM_FEATURES] + [f"user_{name}" for name in USER_FEATURES])


ITEM_FEATURES = ("buyers_all", "buyers_7", "buyers_30", "buyers_90", "adopters", "trend", "age_days",
                 "since_sale_days", "price", "buyers_year_ago", "is_new")
USER_FEATURES = ("last_days", "first_days", "positives", "baskets", "distinct_items", "price")


def item_features(inputs: CutoffInputs) -> torch.Tensor:
    """(I, len(ITEM_FEATURES)): the same for every user."""
    s = inputs.stats.items
    trend = _log(s["buyers_7"]) - _log(s["buyers_30"] * 7 / 30)
    columns = {"buyers_all": _log(s["buyers_all"]), "buyers_7": _log(s["buyers_7"]), "buyers_30": _log(s["buyers_30"]),
               "buyers_90": _log(s["buyers_90"]), "adopters": _log(s["adopters"]), "trend": trend,
               "age_days": s["age_days"], "since_sale_days": s["since_sale_days"],
               "price": torch.log(s["price"].clamp(min=1e-3)), "buyers_year_ago": _log(s["buyers_year_ago"]),
               "is_new": (~inputs.signals.data.interacted).float()}
    return torch.stack([columns[name] for name in ITEM_FEATURES], 1)


def user_features(inputs: CutoffInputs, users: torch.Tensor) -> torch.Tensor:
    """(users, len(USER_FEATURES))."""
    stats = inputs.stats
    columns = {name: stats.of_users(name, users) for name in USER_FEATURES}
    for name in ("positives", "baskets", "distinct_items"):
        columns[name] = _log(columns[name])
    columns["price"] = torch.log(columns["price"].clamp(min=1e-3))
    return torch.stack([columns[name] for name in USER_FEATURES], 1)


def pair_features(inputs: CutoffInputs, block: Block, candidates: Candidates,
                  items_table: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, features) in the order of `feature_names`, in one matrix of `dtype` (float64 is what the
    compiled trees read, so serving asks for it and no second copy is made). Scores are standardised per user over the
    catalog (a user's 2 against their own spread, not a raw dot product), by `score_block`."""
    num_items = block.excluded.shape[1]
    distinct = _log(inputs.stats.of_users("distinct_items", block.users)).clamp(min=1e-3)
    users_table = user_features(inputs, block.users)
    item_table = item_features(inputs) if items_table is None else items_table
    segment = inputs.stats.segment_of(block.users)
    rows, items = candidates.rows, candidates.items
    pair = rows * num_items + items          # the pairs' cells of the block's (users, items) tensors

    def cell(scores: torch.Tensor) -> torch.Tensor:   # (n,) the pairs' values: one flat gather, not a 2-D index
        return scores.reshape(-1)[pair]

    price_item, price_user = ITEM_FEATURES.index("price"), USER_FEATURES.index("price")
    parts = [cell(block.scores[g]) for g in SCORED if g in block.scores]
    parts += [candidates.ranks, cell(block.scores["text_similarity"]),
              _log(cell(block.scores["attribute_overlap"])) / distinct[rows],
              inputs.stats.segment_share.reshape(-1)[segment[rows] * num_items + items],
              item_table[items, price_item] - users_table[rows, price_user], item_table[items], users_table[rows]]
    return _side_by_side(parts, dtype)


def _side_by_side(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(n, total width) of `dtype` from (n,) and (n, w) parts, in one allocation. (Filled a few
    thousand rows at a time instead, to stay in the cache, it was 30% slower: measured.)"""
    parts = [part if part.dim() == 2 else part.unsqueeze(1) for part in parts]
    out = torch.empty((parts[0].shape[0], sum(part.shape[1] for part in parts)), dtype=dtype)
    at = 0
    for part in parts:
        out[:, at:at + part.shape[1]] = part
        at += part.shape[1]
    return out
