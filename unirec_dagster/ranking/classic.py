"""The strongest classic peers, as item x item models over the binary users x items purchase matrix X
(a user's scores are the sum of the rows of their past items):

- EASE^R (Steck 2019): B = -P / diag(P), P = (XᵀX + λI)⁻¹, diagonal zeroed. A dense inverse, so
  catalogs above `EASE_MAX_ITEMS` are fitted on their most-bought items only (the others score 0
  from EASE and reach the lists through the other generators). The inverse grows with the cube of
  the items: `ease_from_gram` took 2.1 s at Online Retail's 3,900 and 17.4 s at 8,000 on these 2
  cores, once per λ of the nightly grid (0.5 GB in float64 at 8,000); at 20,000 it would be 3.2 GB
  and minutes each.
- RP3beta (Paudel et al. 2017, as in Dacrema et al.'s reproducibility study): the two-step random
  walk item -> user -> item, transition probabilities raised to α, each column divided by the
  item's popularity to the power β, each row's top `RP3_NEIGHBOURS` kept. Blocked like the
  co-purchase neighbours, so only a (block x items) slab is dense at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

EASE_MAX_ITEMS = 8_000
RP3_NEIGHBOURS = 200
EASE, RP3BETA, EASE_RECENT = "EASE^R", "RP3beta", "EASE^R + recent popularity"
CLASSIC = (EASE, RP3BETA, EASE_RECENT)


@dataclass(frozen=True)
class ClassicParams:
    """The classic peers' hyperparameters, chosen on the validation window (`training.classic`)."""

    ease_lambda: float = 400.0
    rp3_alpha: float = 1.0
    rp3_beta: float = 0.4


@dataclass
class TunedClassic:
    params: ClassicParams
    recent_weight: float
    validation: dict[str, dict[str, float]]   # baseline -> its validation Recall@20, NDCG@20

    def weights(self, name: str) -> dict[str, float]:
        """The Scorer weights of a tuned baseline."""
        return {EASE: {"ease": 1.0}, RP3BETA: {"rp3beta": 1.0},
                EASE_RECENT: {"ease": 1.0, "recent_popularity": self.recent_weight}}[name]

    @property
    def strongest(self) -> str:
        """The baseline with the best validation Recall@20 (NDCG@20 breaks ties)."""
        return max(CLASSIC, key=lambda n: (self.validation[n]["recall@20"], self.validation[n]["ndcg@20"]))

    def to_manifest(self) -> dict:
        return {"params": dataclasses.asdict(self.params), "recent_weight": self.recent_weight,
                "validation": self.validation}

    @classmethod
    def from_manifest(cls, about: dict) -> TunedClassic:
        return cls(ClassicParams(**about["params"]), about["recent_weight"], about["validation"])


def ease_gram(history: torch.Tensor, item_buyers: torch.Tensor,
              max_items: int = EASE_MAX_ITEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns, XᵀX): the candidate positions EASE^R is fitted on (the `max_items` most-bought when
    the catalog is larger) and their (n, n) float64 Gram matrix; the same for every λ."""
    num_items = history.shape[1]
    columns = (torch.arange(num_items) if num_items <= max_items
               else torch.topk(item_buyers, max_items).indices.sort().values)
    x = history.index_select(1, columns).coalesce() if len(columns) < num_items else history
    return columns, torch.sparse.mm(x.t(), x).to_dense().double()


def ease_from_gram(gram: torch.Tensor, lam: float) -> torch.Tensor:
    """EASE^R's (n, n) weights for λ. An LU inverse: on this CPU 1.7x faster than cholesky_inverse
    for the same result (the matrix is positive definite for λ > 0)."""
    regularised = gram.clone()
    regularised.diagonal().add_(lam)
    precision = torch.linalg.inv(regularised)
    del regularised
    weights = -precision / precision.diagonal()
    weights.fill_diagonal_(0.0)
    # LAPACK's inverse comes back column-major: a sparse x dense product reads it 10x slower so
    return weights.float().contiguous()


def ease_weights(history: torch.Tensor, item_buyers: torch.Tensor, lam: float,
                 max_items: int = EASE_MAX_ITEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns, B): EASE's (n, n) item weights over the candidate positions `columns`. `history` is
    the sparse binary users x items matrix."""
    columns, gram = ease_gram(history, item_buyers, max_items)
    return columns, ease_from_gram(gram, lam)


def rp3beta_weights(history: torch.Tensor, alpha: float, beta: float, neighbours: int = RP3_NEIGHBOURS,
                    block: int = 2048) -> torch.Tensor:
    """(items, items) sparse RP3beta weights: W = D_i^-α (Xᵀ D_u^-α X) D_j^-β, diagonal zeroed, the top
    `neighbours` per row."""
    num_users, num_items = history.shape
    history = history.coalesce()
    users, items = history.indices()
    user_degree = torch.bincount(users, minlength=num_users).float().clamp(min=1)
    item_degree = torch.bincount(items, minlength=num_items).float().clamp(min=1)
    # X with each user's row scaled by deg_u^-α: the second step of the walk
    walk = torch.sparse_coo_tensor(history.indices(), user_degree[users].pow(-alpha), history.shape,
                                   check_invariants=False).coalesce()

    def weigh(slab: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        slab *= item_degree[ids].pow(-alpha).unsqueeze(1)
        slab /= item_degree.pow(beta).unsqueeze(0)
        return slab

    return top_neighbours(history.t().coalesce(), walk, weigh, neighbours, block)


def top_neighbours(by_item: torch.Tensor, right: torch.Tensor, weigh: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   neighbours: int, block: int) -> torch.Tensor:
    """(items, items) sparse: each item's `neighbours` best positive scores, where the scores of a
    block of items `ids` are weigh((by_item[ids] @ right) dense, ids), an item never its own
    neighbour. Built block by block, so only a (block x items) slab is dense at a time."""
    num_items = right.shape[1]
    k = min(neighbours, max(num_items - 1, 1))
    rows, cols, vals = [], [], []
    for start in range(0, num_items, block):
        ids = torch.arange(start, min(start + block, num_items))
        slab = weigh(torch.sparse.mm(by_item.index_select(0, ids), right).to_dense(), ids)   # (block, items)
        slab[torch.arange(len(ids)), ids] = 0.0
        top = torch.topk(slab, k, dim=1)
        keep = top.values > 0
        rows.append(ids.unsqueeze(1).expand(-1, k)[keep])
        cols.append(top.indices[keep])
        vals.append(top.values[keep])
    if not rows:
        return torch.sparse_coo_tensor(torch.empty((2, 0), dtype=torch.long), torch.empty(0), (num_items, num_items),
                                       check_invariants=False)
    return torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals),
                                   (num_items, num_items), check_invariants=False).coalesce()
