"""Implicit-feedback ALS (Hu, Koren and Volinsky 2008), the strongest classic baseline of
EVALUATION.md, with its settings: 64 factors, regularisation 0.05, 20 iterations, alpha 10, on
1 + log(1 + count) confidences.

Each half-step solves, for every user (then every item), the regularised weighted least squares
(Y^T C_u Y + lambda I) x_u = Y^T C_u p_u by conjugate gradient, as the `implicit` library does
(exact batched solves took 300 s on Online Retail; this takes a few seconds).
"""

from __future__ import annotations

import torch

from unirec_dagster.history import TrainingData

CG_STEPS = 3  # conjugate-gradient steps per half-iteration, warm-started from the previous factors


def _solve(rows: torch.Tensor, cols: torch.Tensor, confidence: torch.Tensor, current: torch.Tensor,
           fixed: torch.Tensor, regularization: float) -> torch.Tensor:
    """New factors for every row given the other side's `fixed` factors: a few conjugate-gradient
    steps on (Y^T Y + lambda I + Y^T (C_u - I) Y) x_u = Y^T C_u p_u, all rows at once, each
    product touching only the observed pairs."""
    gram = fixed.T @ fixed + regularization * torch.eye(fixed.shape[1])
    y = fixed[cols]                                                           # (P, d)

    def apply(v: torch.Tensor) -> torch.Tensor:                               # A v, row by row
        weight = (confidence - 1) * (y * v[rows]).sum(1)
        return v @ gram + torch.zeros_like(v).index_add_(0, rows, weight.unsqueeze(1) * y)

    b = torch.zeros_like(current).index_add_(0, rows, confidence.unsqueeze(1) * y)
    x = current.clone()
    r = b - apply(x)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    for _ in range(CG_STEPS):
        ap = apply(p)
        step = rs / (p * ap).sum(1, keepdim=True).clamp(min=1e-20)
        x += step * p
        r -= step * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + rs_new / rs.clamp(min=1e-20) * p
        rs = rs_new
    return x


def fit_als(data: TrainingData, factors: int = 64, regularization: float = 0.05, iterations: int = 20,
            alpha: float = 10.0, seed: int = 0) -> torch.Tensor:
    """(num_entities, factors) embeddings: user rows at their entity ids, item rows at the candidate
    items' entity ids, so that a Scorer ranks with them as with the model's."""
    users, user_rows = torch.unique(data.train_users, return_inverse=True)
    items = data.train_items
    confidence = 1.0 + alpha * torch.log1p(data.train_counts.float())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(users), factors, generator=g) * 0.01
    y = torch.randn(data.num_items, factors, generator=g) * 0.01
    by_item = torch.argsort(items, stable=True)
    for _ in range(iterations):
        x = _solve(user_rows, items, confidence, x, y, regularization)
        y = _solve(items[by_item], user_rows[by_item], confidence[by_item], y, x, regularization)
    size = int(max(data.items.max(), users.max() if len(users) else 0)) + 1
    out = torch.zeros(size, factors)
    out[users] = x
    out[data.items] = y
    return out
