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

    def examples(self, users: torch.Tensor) -> Iterator[Examples]:
        """Candidates and features of `users`, block by block."""
        chunk = block_rows(self.inputs.signals.data.num_items)
        for start in range(0, len(users), chunk):
            block = score_block(self.inputs, users[start:start + chunk], self.never)
            candidates = generate(self.inputs, block, self.config)
            yield Examples(block.users, candidates, pair_features(self.inputs, block, candidates, self.items_table),
                           block.excluded)

    def top_k(self, users: torch.Tensor, k: int, new_item_every: int = 0) -> Iterator[RankedBlock]:
        """The ranker's top K of `users`, block by block. Items nobody has bought yet go where the
        new-item placement (if fitted) learned they belong: by purchase probability, or into ranks
        n, 2n, ... when validation chose that; `new_item_every` = n forces the latter (an operator's
        override)."""
        if self.ranker is None:
            raise ValueError("a TwoStage without a fitted ranker can build examples but not rank")
        start = 0
        new = self.inputs.new_items[~torch.isin(self.inputs.new_items, self.never)]
        every = new_item_every or (self.placement.every if self.placement is not None else 0)
        slots, main_ranks, new_ranks = new_item_slots(k, every, len(new))
        popularity = torch.log1p(self.inputs.stats.items["buyers_30"])
        popularity = popularity / popularity.max().clamp(min=1e-6)                     # (I,) in [0, 1]
        for examples in self.examples(users):
            n, num_items = len(examples.users), self.inputs.signals.data.num_items
            cand = examples.candidates
            features = examples.features.numpy()
            predicted_ = self.ranker.predict(features)
            if self.placement is not None:  # purchase probabilities, new items by their own model
                is_new = (~self.inputs.signals.data.interacted[cand.items]).numpy()
                predicted_ = self.placement.probabilities(features, predicted_, is_new)
            predicted = torch.from_numpy(predicted_).float()
            floor = (predicted.min() if len(predicted) else torch.tensor(0.0)) - 2.0
            scores = (floor + popularity).expand(n, -1).clone()                         # fillers below candidates
            scores[cand.rows, cand.items] = predicted
            scores.masked_fill_(examples.excluded, float("-inf"))
            if slots:
                best_new = torch.topk(scores[:, new], slots, dim=1)
                scores[:, new] = float("-inf")
                rest = torch.topk(scores, min(k - slots, num_items), dim=1)
                top_values = interleave(rest.values, best_new.values, main_ranks, new_ranks)
                top_items = interleave(rest.indices, new[best_new.indices], main_ranks, new_ranks)
            else:
                top_values, top_items = torch.topk(scores, min(k, num_items), dim=1)
            leads = cand.generators + [FILLER]
            lead_of = torch.full((n, num_items), len(cand.generators), dtype=torch.int8)  # a few generators: 1 byte
            lead_of[cand.rows, cand.items] = cand.lead({g: self.config.size(g) for g in cand.generators}).to(torch.int8)
            yield RankedBlock(slice(start, start + n), top_values, top_items, lead_of.gather(1, top_items).long(), leads)
            start += n
