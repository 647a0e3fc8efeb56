"""Blend weights fitted on the validation window: a search over the weight simplex for the best
validation Recall@20 of the standardised signals (model, co-purchase, recent and all-time
popularity). Direct, deterministic, and it optimises the metric we report."""

from __future__ import annotations

import itertools

import torch

from unirec_dagster.evaluation.scoring import Scorer
from unirec_dagster.evaluation.split import HoldoutPairs

MAX_CELLS = 8_000_000  # users x items x features held at once while fitting


def _simplex(n: int, step: float) -> list[tuple[float, ...]]:
    units = round(1 / step)
    return [tuple(c / units for c in combo) + ((units - sum(combo)) / units,)
            for combo in itertools.product(range(units + 1), repeat=n - 1) if sum(combo) <= units]


def fit_blend(scorer: Scorer, holdout: HoldoutPairs, step: float = 0.05, k: int = 20,
              seed: int = 0) -> tuple[dict[str, float], float]:
    """(weights, validation Recall@k). Users are subsampled when the catalog is large."""
    num_items = scorer.signals.data.num_items
    names = scorer.feature_names
    cap = max(1, MAX_CELLS // max(num_items * len(names), 1))
    rows = torch.arange(len(holdout.users))
    if len(rows) > cap:
        rows = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:cap].sort().values
    users = holdout.users[rows]
    stacked = torch.stack(list(scorer.features(users).values()), -1)     # (U, I, F)
    r, c = scorer.signals.exclusions(users)
    excluded = torch.zeros(len(rows), num_items, dtype=torch.bool)
    excluded[r, c] = True
    new_row = torch.full((len(holdout.users),), -1, dtype=torch.long)
    new_row[rows] = torch.arange(len(rows))
    keep = (new_row[holdout.pair_users] >= 0) & (holdout.pair_items >= 0)
    relevant = torch.zeros(len(rows), num_items, dtype=torch.bool)
    relevant[new_row[holdout.pair_users[keep]], holdout.pair_items[keep]] = True
    positives = torch.bincount(new_row[holdout.pair_users[new_row[holdout.pair_users] >= 0]],
                               minlength=len(rows)).float()
    best, best_weights = -1.0, None
    for weights in _simplex(len(names), step):
        scores = (stacked @ torch.tensor(weights)).masked_fill_(excluded, float("-inf"))
        top = torch.topk(scores, min(k, num_items), dim=1).indices
        recall = float((relevant.gather(1, top).sum(1) / positives.clamp(min=1)).mean())
        if recall > best + 1e-9:
            best, best_weights = recall, weights
    return dict(zip(names, best_weights)), best
