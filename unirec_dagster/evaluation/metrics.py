"""Ranking metrics of EVALUATION.md: Recall, NDCG, HitRate at K, MRR, catalog coverage.
The one place metrics are computed, for the model, the baselines and the serving checks."""

from __future__ import annotations

import math

import torch

KS = (10, 20, 50)


def ranking_metrics(top_items: torch.Tensor, positive_users: torch.Tensor, positive_items: torch.Tensor,
                    positives_per_user: torch.Tensor, num_items: int, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """`top_items` (U, >= max K): ranked item indices per evaluated user, -1 for an empty place. Positives are pairs (user
    row, item index); an item index of -1 is a positive that cannot be ranked (unknown item), which
    still counts in the denominator. `positives_per_user` (U,) counts every positive of a user.
    Means are over the U users; MRR is over the top max(ks)."""
    num_users, depth = top_items.shape
    if num_users == 0:
        return {}
    width = num_items + 1
    wanted = positive_users * width + positive_items
    hits = torch.isin(torch.arange(num_users).unsqueeze(1) * width + top_items, wanted[positive_items >= 0])
    hits = hits.float()
    discounts = 1.0 / torch.log2(torch.arange(2, depth + 2, dtype=torch.float32))
    out: dict[str, float] = {}
    n_pos = positives_per_user.float()
    for k in ks:
        h = hits[:, :k]
        found = h.sum(1)
        ideal = torch.cumsum(discounts[:k], 0)[(n_pos.clamp(max=k) - 1).long()]
        out[f"recall@{k}"] = float((found / n_pos).mean())
        out[f"ndcg@{k}"] = float(((h * discounts[:k]).sum(1) / ideal).mean())
        out[f"hitrate@{k}"] = float((found > 0).float().mean())
        shown = top_items[:, :k]
        out[f"coverage@{k}"] = float(torch.unique(shown[shown >= 0]).numel() / max(num_items, 1))
    first = torch.where(hits.any(1), hits.argmax(1).float() + 1, torch.tensor(math.inf))
    out["mrr"] = float((1.0 / first).mean())
    return out
