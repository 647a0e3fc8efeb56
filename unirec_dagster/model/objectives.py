"""Training objectives over the encoder's output embeddings. Each takes a sampled mini-batch,
so no dense users x items (or entities x entities) matrix is ever formed."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(emb: torch.Tensor, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
             weights: torch.Tensor | None = None, l2: float = 0.0) -> torch.Tensor:
    """Bayesian personalised ranking: a user's item should outscore a sampled item."""
    u, p, n = emb[users], emb[positives], emb[negatives]
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


def sampled_softmax_loss(emb: torch.Tensor, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                         weights: torch.Tensor, temperature: float, l2: float = 0.0) -> torch.Tensor:
    """Cross-entropy of each user's item against the batch's shared sampled items, on cosine
    similarities over a temperature. On Online Retail's validation window it reached Recall@20
    0.111 at epoch 7 where BPR reached 0.103 at epoch 15 (BENCHMARKS.md)."""
    # The (B, S) logits are the step's largest tensor: the temperature is folded into the (B, d)
    # side, the positive joins by logaddexp instead of a concatenation, and RowLogSumExp works
    # through them in chunks.
    u = F.normalize(emb[users], dim=-1) / temperature      # (B, d)
    p = F.normalize(emb[positives], dim=-1)                # (B, d)
    n = F.normalize(emb[negatives], dim=-1)                # (S, d), shared by the batch
    positive = (u * p).sum(-1)                             # (B,)
    losses = torch.logaddexp(positive, RowLogSumExp.apply(u, n)) - positive
    loss = (losses * weights).sum() / weights.sum()
    if l2:
        loss = loss + l2 * (emb[users].pow(2).sum(-1) + emb[positives].pow(2).sum(-1)).mean()
    return loss


def link_loss(kind: str, emb: torch.Tensor, users: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor,
              generator: torch.Generator, negatives: int, temperature: float, weights: torch.Tensor | None = None,
              l2: float = 0.0) -> torch.Tensor:
    """Link prediction of (user, positive) pairs against items drawn from `candidates`: a sampled
    softmax whose `negatives` draws the batch shares (`kind` "softmax"), or BPR with one draw per
    pair. Pretraining and fine-tuning both score their links with it."""
    draws = negatives if kind == "softmax" else len(users)
    sampled = candidates[torch.randint(len(candidates), (draws,), generator=generator)].to(emb.device)
    if kind == "softmax":
        weights = weights if weights is not None else torch.ones(len(users), device=emb.device)
        return sampled_softmax_loss(emb, users, positives, sampled, weights, temperature, l2=l2)
    return bpr_loss(emb, users, positives, sampled, weights, l2=l2)


def distmult_loss(emb: torch.Tensor, relation_vectors: torch.Tensor, heads: torch.Tensor, relations: torch.Tensor,
                  tails: torch.Tensor, negative_tails: torch.Tensor) -> torch.Tensor:
    """KG triple completion: <h, r, t> of a true triple above that of a corrupted tail."""
    h, r = emb[heads], relation_vectors[relations]
    positive = (h * r * emb[tails]).sum(-1)
    negative = (h * r * emb[negative_tails]).sum(-1)
    return F.softplus(-positive).mean() + F.softplus(negative).mean()


def masked_attribute_loss(emb: torch.Tensor, items: torch.Tensor, values: torch.Tensor,
                          candidates: torch.Tensor) -> torch.Tensor:
    """Predict a hidden attribute value of each item among all values of that attribute.
    `values` are indices into `candidates` (the entity ids of the attribute's values)."""
    logits = emb[items] @ emb[candidates].T
    return F.cross_entropy(logits, values)


def info_nce(graph_view: torch.Tensor, text_view: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: an item's graph and text embeddings pair up."""
    g = F.normalize(graph_view, dim=-1)
    t = F.normalize(text_view, dim=-1)
    logits = g @ t.T / temperature
    target = torch.arange(len(g), device=g.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
