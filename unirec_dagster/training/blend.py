"""Blend weights learned on the validation window: a multinomial logit over the candidate items.

Each validation user's score for an item is a weighted sum of the standardised signals (model,
co-purchase, recent and all-time popularity); the weights maximise the likelihood of the items
the user actually bought in the window under a softmax over all the user's candidates, every
user counting equally, with a small L2 penalty. Compared with searching the weight simplex for
the best Recall@20 this uses every positive rather than top-20 hits only (a smoother, less noisy
objective), and weights may be negative: recent popularity minus all-time popularity is a
"trending" signal that non-negative weights cannot express (BENCHMARKS.md has the comparison).
"""

from __future__ import annotations

import torch

from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.ranking.scoring import Scorer

MAX_CELLS = 48_000_000  # users x items x features held at once while fitting (~0.2 GB, ~1 GB with gradients)


def fit_blend(scorer: Scorer, holdout: HoldoutPairs, l2: float = 1e-3, max_iter: int = 200,
              seed: int = 0) -> dict[str, float]:
    """Weights per feature of `scorer` (its own weights are ignored). Users are subsampled when
    the catalog is large."""
    num_items = scorer.signals.data.num_items
    names = scorer.feature_names
    ranked = holdout.pair_items >= 0  # positives on items unknown before the cutoff cannot be ranked
    rows = torch.unique(holdout.pair_users[ranked])
    cap = max(1, MAX_CELLS // max(num_items * len(names), 1))
    if len(rows) > cap:
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:cap].sort().values]
    if not len(rows):
        raise ValueError("no validation user bought an item known before the validation cutoff: cannot fit a blend")
    keep_users = torch.zeros(len(holdout.users), dtype=torch.bool)
    keep_users[rows] = True
    fit = holdout.subset(keep_users, ranked)
    features = torch.stack(list(scorer.features(fit.users).values()), -1)       # (U, I, F)
    r, c = scorer.signals.exclusions(fit.users)
    excluded = torch.zeros(len(fit.users), num_items, dtype=torch.bool)
    excluded[r, c] = True
    pair_rows, pair_items = fit.pair_users, fit.pair_items
    pair_weight = 1.0 / fit.positives_per_user.float()[pair_rows] / len(fit.users)

    weights = torch.ones(len(names), requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        optimizer.zero_grad()
        log_p = (features @ weights).masked_fill(excluded, float("-inf")).log_softmax(1)
        loss = -(log_p[pair_rows, pair_items] * pair_weight).sum() + l2 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(loss_fn)
    return {name: round(float(w), 4) for name, w in zip(names, weights.detach())}
