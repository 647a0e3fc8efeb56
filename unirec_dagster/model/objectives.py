"""Training objectives over rows of the encoder's output embeddings. A task reads all the rows of
a step with one `lookup`, then each objective scores its sampled mini-batch of them, so no dense
users x items (or entities x entities) matrix is ever formed."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lookup(emb, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rows of `emb` for each named id tensor, read in one indexing: one gradient scatter per
    step instead of one per objective, and one neighbourhood sample in a sampled step."""
    names = list(ids)
    rows = emb[torch.cat([ids[name].to(emb.device) for name in names])]  # ids may sit on either device
    return dict(zip(names, torch.split(rows, [len(ids[name]) for name in names])))


def bpr_loss(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor, weights: torch.Tensor | None = None,
             l2: float = 0.0) -> torch.Tensor:
    """Bayesian personalised ranking: a user's item should outscore a sampled item (rows of users,
    their items, one sampled item each)."""
    losses = F.softplus(-((u * p).sum(-1) - (u * n).sum(-1)))
    loss = (losses * weights).sum() / weights.sum() if weights is not None else losses.mean()
    if l2:
        loss = loss + l2 * (u.pow(2).sum(-1) + p.pow(2).sum(-1) + n.pow(2).sum(-1)).mean()
    return loss


LOGITS_PER_CHUNK = 1 << 22  # 4M logits (16 MiB) per chunk of rows in `RowLogSumExp`


class RowLogSumExp(torch.autograd.Function):
    """logsumexp(u @ n.T, dim=1) computed in chunks of rows, never holding the (B, S) logits: the
    backward recomputes each chunk's logits instead of keeping them. On the 10M-event graph a
    step's logits were 262,144 x 1,024 (1 GiB per copy, several copies alive in autograd)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, u: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        rows = max(1, LOGITS_PER_CHUNK // max(len(n), 1))
        out = torch.empty(len(u), dtype=u.dtype, device=u.device)
        for start in range(0, len(u), rows):
            logits = u[start:start + rows] @ n.T
            top = logits.amax(1, keepdim=True)
            out[start:start + rows] = logits.sub_(top).exp_().sum(1).log_().add_(top.squeeze(1))
        ctx.save_for_backward(u, n, out)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: torch.Tensor):
        u, n, lse = ctx.saved_tensors
        rows = max(1, LOGITS_PER_CHUNK // max(len(n), 1))
        grad_u, grad_n = torch.empty_like(u), torch.zeros_like(n)
        for start in range(0, len(u), rows):
            chunk = slice(start, start + rows)
            # softmax of the chunk's logits, scaled by each row's incoming gradient
            weights = (u[chunk] @ n.T).sub_(lse[chunk, None]).exp_().mul_(grad[chunk, None])
            torch.mm(weights, n, out=grad_u[chunk])
            grad_n.addmm_(weights.T, u[chunk])
        return grad_u, grad_n


def sampled_softmax_loss(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor, weights: torch.Tensor,
                         temperature: float, l2: float = 0.0) -> torch.Tensor:
    """Cross-entropy of each user's item against the batch's shared sampled items (`n`, S rows), on
    cosine similarities over a temperature. On Online Retail's validation window it reached
    Recall@20 0.111 at epoch 7 where BPR reached 0.103 at epoch 15 (BENCHMARKS.md)."""
    # The (B, S) logits are the step's largest tensor: the temperature is folded into the (B, d)
    # side, the positive joins by logaddexp instead of a concatenation, and RowLogSumExp works
    # through them in chunks.
    user = F.normalize(u, dim=-1) / temperature
    positive = (user * F.normalize(p, dim=-1)).sum(-1)
    losses = torch.logaddexp(positive, RowLogSumExp.apply(user, F.normalize(n, dim=-1))) - positive
    loss = (losses * weights).sum() / weights.sum()
    if l2:
        loss = loss + l2 * (u.pow(2).sum(-1) + p.pow(2).sum(-1)).mean()
    return loss


def link_negatives(kind: str, candidates: torch.Tensor, pairs: int, negatives: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Items drawn from `candidates` as negatives: `negatives` shared by the batch for the
    softmax, one per pair for BPR."""
    draws = negatives if kind == "softmax" else pairs
    return candidates[torch.randint(len(candidates), (draws,), generator=generator)]


def link_loss(kind: str, u: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float,
              weights: torch.Tensor | None = None, l2: float = 0.0) -> torch.Tensor:
    """Link prediction of (user, positive) rows against the rows of `link_negatives`: the sampled
    softmax (`kind` "softmax") or BPR. Pretraining and fine-tuning both score their links with it."""
    if kind == "softmax":
        weights = weights if weights is not None else torch.ones(len(u), device=u.device)
        return sampled_softmax_loss(u, p, n, weights, temperature, l2=l2)
    return bpr_loss(u, p, n, weights, l2=l2)


def distmult_loss(h: torch.Tensor, r: torch.Tensor, t: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """KG triple completion: <h, r, t> of a true triple above that of a corrupted tail (rows)."""
    positive = (h * r * t).sum(-1)
    negative = (h * r * corrupted).sum(-1)
    return F.softplus(-positive).mean() + F.softplus(negative).mean()


def masked_attribute_loss(items: torch.Tensor, values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Predict a hidden attribute value of each item (rows `items`) among all values of that
    attribute (rows `candidates`); `values` are indices into `candidates`."""
    return F.cross_entropy(items @ candidates.T, values)


def info_nce(graph_view: torch.Tensor, text_view: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: an item's graph and text embeddings pair up."""
    g = F.normalize(graph_view, dim=-1)
    t = F.normalize(text_view, dim=-1)
    logits = g @ t.T / temperature
    target = torch.arange(len(g), device=g.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
