"""Ranking metrics of EVALUATION.md: Recall, NDCG, HitRate at K, MRR, catalog coverage.
The one place metrics are computed, for the model, the baselines and the serving checks."""

from __future__ import annotations

import math

import torch

KS = (10, 20, 50)


def _hits(top_items: torch.Tensor, positive_users: torch.Tensor, positive_items: torch.Tensor,
          num_items: int) -> torch.Tensor:
    """(U, depth) float: 1 where the ranked item is one of the user's positives."""
    width = num_items + 1
    wanted = positive_users * width + positive_items
    return torch.isin(torch.arange(len(top_items)).unsqueeze(1) * width + top_items,
                      wanted[positive_items >= 0]).float()


def _discounts(depth: int) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, depth + 2, dtype=torch.float32))


def _recall_ndcg(hits: torch.Tensor, positives_per_user: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U,) Recall@k and NDCG@k of each user from the hit matrix."""
    discounts = _discounts(hits.shape[1])[:k]
    h, n_pos = hits[:, :k], positives_per_user.float()
    ideal = torch.cumsum(discounts, 0)[(n_pos.clamp(max=k) - 1).long()]
    return h.sum(1) / n_pos, (h * discounts).sum(1) / ideal


def per_user_metrics(top_items: torch.Tensor, positive_users: torch.Tensor, positive_items: torch.Tensor,
                     positives_per_user: torch.Tensor, num_items: int, k: int = 20) -> dict[str, torch.Tensor]:
    """Recall@k and NDCG@k of each evaluated user, (U,) each, with `ranking_metrics`' arguments: what
    its means are taken over, and what a paired comparison of two rankings resamples."""
    recall, ndcg = _recall_ndcg(_hits(top_items, positive_users, positive_items, num_items), positives_per_user, k)
    return {f"recall@{k}": recall, f"ndcg@{k}": ndcg}


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, level: float = 0.9, resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float]:
    """The central `level` interval of mean(a - b) over users resampled with replacement (a and b:
    (U,) per-user figures of two rankings of the same users). Its lower end above zero says a beats
    b by more than the luck of which users happened to be in the window (Efron & Tibshirani 1993)."""
    if not len(a):
        return 0.0, 0.0
    difference = (a - b).double()
    draws = torch.randint(len(difference), (resamples, len(difference)), generator=torch.Generator().manual_seed(seed))
    means = difference[draws].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)


def ranking_metrics(top_items: torch.Tensor, positive_users: torch.Tensor, positive_items: torch.Tensor,
                    positives_per_user: torch.Tensor, num_items: int, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """`top_items` (U, >= max K): ranked item indices per evaluated user, -1 for an empty place. Positives are pairs (user
    row, item index); an item index of -1 is a positive that cannot be ranked (unknown item), which
    still counts in the denominator. `positives_per_user` (U,) counts every positive of a user.
    Means are over the U users; MRR is over the top max(ks)."""
    num_users, depth = top_items.shape
    if num_users == 0:
        return {}
    hits = _hits(top_items, positive_users, positive_items, num_items)
    out: dict[str, float] = {}
    for k in ks:
        recall, ndcg = _recall_ndcg(hits, positives_per_user, k)
        found = hits[:, :k].sum(1)
        out[f"recall@{k}"] = float(recall.mean())
        out[f"ndcg@{k}"] = float(ndcg.mean())
        out[f"hitrate@{k}"] = float((found > 0).float().mean())
        shown = top_items[:, :k]
        out[f"coverage@{k}"] = float(torch.unique(shown[shown >= 0]).numel() / max(num_items, 1))
    first = torch.where(hits.any(1), hits.argmax(1).float() + 1, torch.tensor(math.inf))
    out["mrr"] = float((1.0 / first).mean())
    return out
