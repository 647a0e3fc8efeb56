"""Evaluate a scorer on a holdout window: blocked top-K for the evaluated users, metrics per slice."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unirec_dagster.evaluation.metrics import KS, ranking_metrics
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.ranking.topk import block_rows, top_k

COLD_USER_POSITIVES = 3  # EVALUATION.md: cold users have fewer than 3 positive events before C


@dataclass
class SliceResult:
    slice: str
    users: int
    metrics: dict[str, float]


def rank(scorer: Scorer, users: torch.Tensor, k: int = max(KS)) -> torch.Tensor:
    """(len(users), k) candidate positions, best first, the users' past purchases excluded."""
    exclude_rows, exclude_items = scorer.signals.exclusions(users)
    _, top = top_k(lambda rows: scorer.scores(users[rows]), len(users), k, exclude_rows, exclude_items,
                   block_rows(scorer.signals.data.num_items))
    return top


def evaluate(scorer: Scorer, holdout: HoldoutPairs, slices: bool = True) -> list[SliceResult]:
    data = scorer.signals.data
    top = rank(scorer, holdout.users)
    results = [SliceResult("all", len(holdout.users), ranking_metrics(
        top, holdout.pair_users, holdout.pair_items, holdout.positives_per_user, data.num_items))]
    if not slices:
        return results
    cold = data.positive_events_of(holdout.users) < COLD_USER_POSITIVES
    for name, keep in (("cold_users", cold), ("warm_users", ~cold)):
        results.append(_subset(name, top, holdout, keep, torch.ones_like(holdout.pair_items, dtype=torch.bool),
                               data.num_items))
    has_unseen = torch.zeros(len(holdout.users), dtype=torch.bool)
    has_unseen[holdout.pair_users[holdout.unseen_item_pair]] = True
    results.append(_subset("unseen_items", top, holdout, has_unseen, holdout.unseen_item_pair, data.num_items))
    return results


def _subset(name: str, top: torch.Tensor, holdout: HoldoutPairs, keep_users: torch.Tensor, keep_pairs: torch.Tensor,
            num_items: int) -> SliceResult:
    sub = holdout.subset(keep_users, keep_pairs)
    if not len(sub.users):
        return SliceResult(name, 0, {})
    return SliceResult(name, len(sub.users), ranking_metrics(top[keep_users], sub.pair_users, sub.pair_items,
                                                             sub.positives_per_user, num_items))
