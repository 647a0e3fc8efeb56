"""Blocked top-K: users in chunks, a (chunk x items) score block, excluded items masked, torch.topk.
Memory stays at one block; a full users x items matrix is never formed."""

from __future__ import annotations

from typing import Callable

import torch

ScoreBlock = Callable[[slice], torch.Tensor]  # rows [a, b) of the user list -> (b - a, items) scores


def top_k(score_block: ScoreBlock, num_users: int, k: int, exclude_users: torch.Tensor | None = None,
          exclude_items: torch.Tensor | None = None, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, item indices), both (num_users, k), best first. `exclude_users`/`exclude_items` are
    pairs (row in the user list, item index) that must not be recommended, sorted by user row."""
    scores_out, items_out = [], []
    if exclude_users is not None:
        bounds = torch.searchsorted(exclude_users, torch.arange(0, num_users + chunk, chunk))
    for block, start in enumerate(range(0, num_users, chunk)):
        rows = slice(start, min(start + chunk, num_users))
        scores = score_block(rows).float()
        if exclude_users is not None:
            lo, hi = int(bounds[block]), int(bounds[block + 1])
            if hi > lo:
                u = (exclude_users[lo:hi] - start).to(scores.device)
                scores[u, exclude_items[lo:hi].to(scores.device)] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        scores_out.append(top.values.cpu())
        items_out.append(top.indices.cpu())
    if not scores_out:
        return torch.empty((0, k)), torch.empty((0, k), dtype=torch.long)
    return torch.cat(scores_out), torch.cat(items_out)
