"""Two-stage ranking: candidates from several generators, scored by the learned ranker, the top K
per user. Items outside every generator's list can still fill a list (a small catalog, a user who
bought most of it): they rank below every candidate, by recent popularity.

The same code builds the ranker's training examples at a validation cutoff (`examples`) and
serves at the cutoff (`top_k`), so what the ranker learned from is what it is later given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from unirec_dagster.ranking.candidates import (
    CandidateConfig,
    Candidates,
    CutoffInputs,
    feature_names,
    generate,
    item_features,
    pair_features,
    score_block,
)
from unirec_dagster.ranking.ranker import NewItemPlacement, Ranker
from unirec_dagster.ranking.topk import block_rows, interleave, new_item_slots

TWO_STAGE = "two-stage ranker"   # the served policy's name when the ranker serves
RANKER_FILE = "ranker.txt"        # the ranker in a fine-tuned checkpoint, LightGBM's text format
PLACEMENT_FILE = "new_items.txt"  # the new-item placement model beside it, the same format


@dataclass
class Examples:
    """Candidates of a block of users with their features, grouped by user (rows sorted by user)."""

    users: torch.Tensor              # (U,) entity ids
    candidates: Candidates
    features: torch.Tensor           # (n, F)
    excluded: torch.Tensor           # (U, items) bool: past purchases and never-recommended items

    def group_sizes(self) -> np.ndarray:
        return torch.bincount(self.candidates.rows, minlength=len(self.users)).numpy()


@dataclass
class RankedBlock:
    rows: slice                      # the block's rows of the user list
    scores: torch.Tensor             # (users, k), -inf where the catalog ran out
    items: torch.Tensor              # (users, k) candidate positions
    lead: torch.Tensor               # (users, k) index into `leads`: the generator that proposed it best
    leads: list[str]


FILLER = "recent_popularity"  # what fills a list beyond the candidates


class TwoStage:
    def __init__(self, inputs: CutoffInputs, config: CandidateConfig, ranker: Ranker | None = None,
                 never: torch.Tensor | None = None, placement: NewItemPlacement | None = None):
        self.inputs, self.config, self.ranker, self.placement = inputs, config, ranker, placement
        self.never = never if never is not None else torch.empty(0, dtype=torch.long)
        self.items_table = item_features(inputs)

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.config, self.inputs.item_vectors is not None)

    def examples(self, users: torch.Tensor, dtype: torch.dtype = torch.float32,
                 withheld: torch.Tensor | None = None) -> Iterator[Examples]:
        """Candidates and features of `users`, block by block (features in `dtype`); `withheld`
        (user entity id x items + item position) are pairs not offered (see `score_block`)."""
        chunk = block_rows(self.inputs.signals.data.num_items)
        for start in range(0, len(users), chunk):
            block = score_block(self.inputs, users[start:start + chunk], self.never, withheld)
            candidates = generate(self.inputs, block, self.config)
            yield Examples(block.users, candidates,
                           pair_features(self.inputs, block, candidates, self.items_table, dtype), block.excluded)

    def predict(self, examples: Examples) -> torch.Tensor:
        """(pairs,) float32: the ranker's score of each candidate, or with a new-item placement the
        purchase probability (new items by their own model)."""
        if self.ranker is None:
            raise ValueError("a TwoStage without a fitted ranker can build examples but not rank")
        features = examples.features.numpy()
        predicted = self.ranker.predict(features)
        if self.placement is not None:
            is_new = (~self.inputs.signals.data.interacted[examples.candidates.items]).numpy()
            predicted = self.placement.probabilities(features, predicted, is_new)
        return torch.from_numpy(predicted).float()

    def top_k(self, users: torch.Tensor, k: int, new_item_every: int = 0) -> Iterator[RankedBlock]:
        """The ranker's top K of `users`, block by block. Items nobody has bought yet go where the
        new-item placement (if fitted) learned they belong: by purchase probability, or into ranks
        n, 2n, ... when validation chose that; `new_item_every` = n forces the latter (an operator's
        override).

        The top K is taken over each user's candidates (some 400), not the catalog; a user with fewer
        candidates than the list needs is ranked over the catalog, the other items below every
        candidate by recent popularity (`_over_catalog`)."""
        if self.ranker is None:
            raise ValueError("a TwoStage without a fitted ranker can build examples but not rank")
        start = 0
        interacted = self.inputs.signals.data.interacted
        new = self.inputs.new_items[~torch.isin(self.inputs.new_items, self.never)]
        every = new_item_every or (self.placement.every if self.placement is not None else 0)
        slots, main_ranks, new_ranks = new_item_slots(k, every, len(new))
        for examples in self.examples(users, dtype=torch.float64):   # float64: what the compiled trees read
            n, cand = len(examples.users), examples.candidates
            predicted = self.predict(examples)
            lead = cand.lead({g: self.config.size(g) for g in cand.generators})
            column, first, counts = _by_user(cand.rows, n)
            padded = torch.full((n, int(counts.max()) if len(cand.rows) else 0), float("-inf"))
            padded.view(-1)[cand.rows * padded.shape[1] + column] = predicted
            k_ = min(k, self.inputs.signals.data.num_items)
            if padded.shape[1] >= k_:
                if slots:
                    is_new = torch.zeros(padded.shape, dtype=torch.bool)
                    is_new[cand.rows, column] = ~interacted[cand.items]
                    best_new = torch.topk(padded.masked_fill(~is_new, float("-inf")), slots, dim=1)
                    rest = torch.topk(padded.masked_fill(is_new, float("-inf")), k_ - slots, dim=1)
                    top_values = interleave(rest.values, best_new.values, main_ranks, new_ranks)
                    places = interleave(rest.indices, best_new.indices, main_ranks, new_ranks)
                    enough = torch.isfinite(top_values).all(1)
                else:
                    top_values, places = torch.topk(padded, k_, dim=1)
                    enough = counts >= k_
                # a short row's places past its own pairs are replaced below; clamped to stay in range
                top_pairs = (first.unsqueeze(1) + places).clamp(max=len(cand.rows) - 1)
                top_items, top_lead = cand.items[top_pairs], lead[top_pairs]
            else:  # nobody in the block has K candidates (a small catalog): every row over the catalog
                top_values, enough = torch.empty((n, k_)), torch.zeros(n, dtype=torch.bool)
                top_items, top_lead = torch.empty((n, k_), dtype=torch.long), torch.empty((n, k_), dtype=torch.long)
            if not enough.all():
                short = torch.nonzero(~enough).flatten()
                values, items, leads = self._over_catalog(examples, short, predicted, lead, k_, new, slots,
                                                          main_ranks, new_ranks)
                top_values[short], top_items[short], top_lead[short] = values, items, leads
            yield RankedBlock(slice(start, start + n), top_values, top_items, top_lead, cand.generators + [FILLER])
            start += n

    def _over_catalog(self, examples: Examples, rows: torch.Tensor, predicted: torch.Tensor, lead: torch.Tensor,
                      k: int, new: torch.Tensor, slots: int, main_ranks: torch.Tensor,
                      new_ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, items, leads) of the top K of the block's `rows` over the whole catalog: the
        candidates by their scores, every other item below them by recent popularity (a filler),
        excluded items -inf."""
        cand, num_items = examples.candidates, self.inputs.signals.data.num_items
        popularity = torch.log1p(self.inputs.stats.items["buyers_30"])
        popularity = popularity / popularity.max().clamp(min=1e-6)                     # (I,) in [0, 1]
        floor = (predicted.min() if len(predicted) else torch.tensor(0.0)) - 2.0       # below every candidate
        local = torch.full((len(examples.users),), -1, dtype=torch.long)
        local[rows] = torch.arange(len(rows))
        mine = local[cand.rows] >= 0
        scores = (floor + popularity).expand(len(rows), -1).clone()
        scores[local[cand.rows[mine]], cand.items[mine]] = predicted[mine]
        scores.masked_fill_(examples.excluded[rows], float("-inf"))
        if slots:
            best_new = torch.topk(scores[:, new], slots, dim=1)
            scores[:, new] = float("-inf")
            rest = torch.topk(scores, min(k - slots, num_items), dim=1)
            top_values = interleave(rest.values, best_new.values, main_ranks, new_ranks)
            top_items = interleave(rest.indices, new[best_new.indices], main_ranks, new_ranks)
        else:
            top_values, top_items = torch.topk(scores, k, dim=1)
        lead_of = torch.full((len(rows), num_items), len(cand.generators), dtype=torch.int8)  # FILLER
        lead_of[local[cand.rows[mine]], cand.items[mine]] = lead[mine].to(torch.int8)
        return top_values, top_items, lead_of.gather(1, top_items).long()


def _by_user(rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each pair of `rows` (sorted by user row) sits when each user's pairs form a row of an
    (n, most pairs of a user) tensor: its column, with each user's first pair index and pair count."""
    counts = torch.bincount(rows, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(len(rows)) - first[rows], first, counts
