"""Evaluate a ranking on a holdout window: metrics for all evaluated users and per slice of
EVALUATION.md. The ranking comes from a scorer (in-process comparisons) or from the rows a
serving partition holds (`evaluation.served`); both go through `slice_metrics`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unirec_dagster.evaluation.metrics import KS, per_user_metrics, ranking_metrics
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.history import TrainingData
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.topk import block_rows, top_k

COLD_USER_POSITIVES = 3  # EVALUATION.md: cold users have fewer than 3 positive events before C
TAIL_ITEM_POSITIVES = 5  # tail items: fewer than 5 positive events before C


@dataclass
class SliceResult:
    slice: str
    users: int
    metrics: dict[str, float]
    pairs: int = 0


def rank(scorer: Scorer, users: torch.Tensor, k: int = max(KS), never: torch.Tensor | None = None) -> torch.Tensor:
    """(len(users), k) candidate positions, best first, the users' past purchases excluded (and the
    positions `never`, which fill a list only when nothing else is left)."""
    exclude_rows, exclude_items = scorer.signals.exclusions(users)
    _, top = top_k(lambda rows: scorer.scores(users[rows]), len(users), k, exclude_rows, exclude_items,
                   block_rows(scorer.signals.data.num_items), never)
    return top


def evaluate(scorer: Scorer, holdout: HoldoutPairs, slices: bool = True) -> list[SliceResult]:
    return slice_metrics(rank(scorer, holdout.users), holdout, scorer.signals.data, slices)


def user_figures(top: torch.Tensor, holdout: HoldoutPairs, num_items: int, k: int = 20) -> dict[str, torch.Tensor]:
    """Recall@k and NDCG@k of each holdout user, (U,) each, for a ranking `top` as in `slice_metrics`."""
    return per_user_metrics(top, holdout.pair_users, holdout.pair_items, holdout.positives_per_user, num_items, k)


def slice_metrics(top: torch.Tensor, holdout: HoldoutPairs, data: TrainingData,
                  slices: bool = True) -> list[SliceResult]:
    """Metrics of a ranking `top` (one row per holdout user, candidate positions, -1 for an empty
    place) overall and, with `slices`, per slice: cold and warm users, new items (no positive
    before C), tail items (fewer than 5 positives before C). A slice has its own users and pairs."""
    everyone = torch.ones(len(holdout.users), dtype=torch.bool)
    every_pair = torch.ones(len(holdout.pair_items), dtype=torch.bool)
    results = [subset_metrics("all", top, holdout, every_pair, data.num_items, everyone)]
    if not slices:
        return results
    cold = data.positive_events_of(holdout.users) < COLD_USER_POSITIVES
    item_positives = torch.cat([data.positive_counts, torch.zeros(1)])[holdout.pair_items]  # -1: unknown item
    # new items: in the catalog before C (rankable) with no positive event before C
    pair_slices = {"new_items": holdout.unseen_item_pair & (holdout.pair_items >= 0),
                   "tail_items": (holdout.pair_items >= 0) & (item_positives < TAIL_ITEM_POSITIVES)}
    for name, keep in (("cold_users", cold), ("warm_users", ~cold)):
        results.append(subset_metrics(name, top, holdout, every_pair, data.num_items, keep))
    for name, keep_pairs in pair_slices.items():
        results.append(subset_metrics(name, top, holdout, keep_pairs, data.num_items))
    return results


def subset_metrics(name: str, top: torch.Tensor, holdout: HoldoutPairs, keep_pairs: torch.Tensor,
                   num_items: int, keep_users: torch.Tensor | None = None) -> SliceResult:
    """Metrics over the pairs where `keep_pairs` is set, for `keep_users` (default: the users who
    have such a pair)."""
    if keep_users is None:
        keep_users = torch.zeros(len(holdout.users), dtype=torch.bool)
        keep_users[holdout.pair_users[keep_pairs]] = True
    sub = holdout.subset(keep_users, keep_pairs)
    if not len(sub.users):
        return SliceResult(name, 0, {}, 0)
    return SliceResult(name, len(sub.users), ranking_metrics(top[keep_users], sub.pair_users, sub.pair_items,
                                                             sub.positives_per_user, num_items), len(sub.pair_items))
