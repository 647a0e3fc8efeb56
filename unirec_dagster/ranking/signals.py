"""Simple strong signals at a cutoff: all-time and recent popularity, item-item co-purchase
(cosine on the users x items purchase matrix, top neighbours per item), and the classic peers
EASE^R and RP3beta (`ranking.classic`). They are baselines on their own, features of the blend and
of the ranker, and its candidate generators."""

from __future__ import annotations

import copy
import functools

import torch

from unirec_dagster.history import TrainingData
from unirec_dagster.ranking.classic import ClassicParams, ease_from_gram, ease_gram, rp3beta_weights, top_neighbours


def _sparse(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False).coalesce()


# Item x item weights are also kept dense up to this many cells (4,096 items, 64 MiB): a block's
# scores are then one sparse x dense product, 5x faster than sparse x sparse and `to_dense`.
DENSE_CELLS = 2**24


def _for_scoring(weights: torch.Tensor) -> torch.Tensor:
    """`weights` (items, items) sparse CSR, dense when small enough (`DENSE_CELLS`)."""
    return weights.to_dense() if weights.shape[0] * weights.shape[1] <= DENSE_CELLS else weights


def _scores(history: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(users, items) dense: `history` (users, items) sparse times `weights` from `_for_scoring`."""
    product = history.to_sparse_csr() @ weights
    if product.layout == torch.strided:
        return product
    # Scattered by hand: twice as fast as the CSR product's own to_dense
    rows = torch.repeat_interleave(torch.arange(product.shape[0]), product.crow_indices().diff())
    return torch.zeros(product.shape).index_put_((rows, product.col_indices()), product.values())


class Signals:
    def __init__(self, data: TrainingData, neighbours: int = 100, item_block: int = 2048,
                 classic: ClassicParams = ClassicParams()):
        self.data = data
        self.classic = classic
        self.user_ids, user_rows = torch.unique(data.train_users, return_inverse=True)
        num_items = data.num_items
        ones = torch.ones(len(user_rows))
        self.history = _sparse(user_rows, data.train_items, ones, (len(self.user_ids), num_items))
        # CSR: the sparse x sparse product in knn_scores is 2-3x faster than with COO here
        self.similarity = self._cosine_neighbours(neighbours, item_block).to_sparse_csr()

    def _cosine_neighbours(self, neighbours: int, block: int) -> torch.Tensor:
        """Item x item cosine of co-purchase, keeping each item's top `neighbours`; built in item
        blocks so that only a (block x items) slab is dense at a time."""
        num_items = self.data.num_items
        by_item = self.history.t().coalesce()
        norms = torch.zeros(num_items).index_add_(0, by_item.indices()[0], by_item.values()).sqrt().clamp(min=1)
        return top_neighbours(by_item, self.history,
                              lambda slab, ids: slab / norms[ids].unsqueeze(1) / norms.unsqueeze(0), neighbours, block)

    def with_classic(self, classic: ClassicParams) -> Signals:
        """The same signals with other EASE/RP3beta hyperparameters (the history and co-purchase shared);
        these very signals, with their fitted weights, when the parameters are theirs already."""
        if classic == self.classic:
            return self
        other = copy.copy(self)
        other.classic = classic
        for cached in ("_ease", "_rp3beta"):
            other.__dict__.pop(cached, None)
        return other

    @functools.cached_property
    def _ease_gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        return ease_gram(self.history, self.data.popularity)   # kept by with_classic: it does not depend on λ

    @functools.cached_property
    def _ease(self) -> tuple[torch.Tensor, torch.Tensor]:
        columns, gram = self._ease_gram
        return columns, ease_from_gram(gram, self.classic.ease_lambda)

    @functools.cached_property
    def _rp3beta(self) -> torch.Tensor:
        return _for_scoring(rp3beta_weights(self.history, self.classic.rp3_alpha, self.classic.rp3_beta).to_sparse_csr())

    @functools.cached_property
    def _similarity(self) -> torch.Tensor:
        return _for_scoring(self.similarity)

    # The scores below take the users' `history_of` when the caller has it already: a block of
    # users scored by every signal then gathers its history once.

    def ease_scores(self, users: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(len(users), items): EASE^R's scores of every candidate (0 for items outside its columns)."""
        columns, weights = self._ease
        history = self.history_of(users) if history is None else history
        if len(columns) < self.data.num_items:
            history = history.index_select(1, columns)
            out = torch.zeros(len(users), self.data.num_items)
            out[:, columns] = torch.sparse.mm(history, weights)
            return out
        return torch.sparse.mm(history, weights)

    def rp3beta_scores(self, users: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(len(users), items): RP3beta's scores of every candidate."""
        return _scores(self.history_of(users) if history is None else history, self._rp3beta)

    def history_of(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), items) sparse purchase history; empty rows for users without one."""
        position = torch.searchsorted(self.user_ids, users).clamp(max=max(len(self.user_ids) - 1, 0))
        known = (self.user_ids[position] == users) if len(self.user_ids) else torch.zeros(len(users), dtype=torch.bool)
        rows_of_known = torch.nonzero(known, as_tuple=True)[0]
        picked = self.history.index_select(0, position[known]).coalesce()
        r, c = picked.indices()
        return _sparse(rows_of_known[r], c, picked.values(), (len(users), self.data.num_items))

    def knn_scores(self, users: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(len(users), items): sum of the similarities of each item to the user's purchases."""
        return _scores(self.history_of(users) if history is None else history, self._similarity)

    def co_purchase(self, anchors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Co-purchase similarity of item positions `anchors` to `items`, elementwise (0 where none)."""
        weights = self._similarity
        if weights.layout == torch.strided:   # one flat gather: 2-D advanced indexing is several times slower
            return weights.view(-1)[anchors * weights.shape[1] + items]
        keys, values = self._similarity_pairs
        wanted = anchors * self.data.num_items + items
        if not len(keys):
            return torch.zeros(wanted.shape)
        at = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
        return torch.where(keys[at] == wanted, values[at], 0.0)

    @functools.cached_property
    def _similarity_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The similarity's (row * items + column) keys, sorted, and values: a sparse lookup table."""
        coo = self.similarity.to_sparse_coo().coalesce()
        rows, cols = coo.indices()
        return rows * self.data.num_items + cols, coo.values()

    def exclusions(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in users, item) pairs of items each user already bought, sorted by row."""
        r, c = self.history_of(users).indices()
        return r, c
