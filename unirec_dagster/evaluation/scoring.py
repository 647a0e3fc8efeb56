"""Scores of (user, item) for a block of users: the model's dot product, the simple signals, and
the blend of them. Each signal is standardised per user over the candidate items before it is
weighted, so blend weights compare like with like."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unirec_dagster.evaluation.signals import Signals

FEATURES = ("model", "co_purchase", "recent_popularity", "popularity")


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp(min=1e-6)


@dataclass
class Scorer:
    signals: Signals
    weights: dict[str, float]                       # feature -> weight; a baseline is one feature at 1
    embeddings: torch.Tensor | None = None          # (num_entities, dim) final model embeddings
    _item_vectors: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        unknown = set(self.weights) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {FEATURES}")
        if self.weights.get("model") and self.embeddings is None:
            raise ValueError("a blend with a model weight needs the model's embeddings")
        if self.embeddings is not None:
            self._item_vectors = self.embeddings[self.signals.data.items.to(self.embeddings.device)]

    def feature(self, name: str, users: torch.Tensor) -> torch.Tensor:
        data = self.signals.data
        if name == "model":
            return (self.embeddings[users.to(self.embeddings.device)] @ self._item_vectors.T).float().cpu()
        if name == "co_purchase":
            return self.signals.knn_scores(users)
        source = data.recent_popularity if name == "recent_popularity" else data.popularity
        return torch.log1p(source).unsqueeze(0).repeat(len(users), 1)

    @property
    def feature_names(self) -> list[str]:
        """The features this scorer can compute (the model's only with embeddings)."""
        return [name for name in FEATURES if name != "model" or self.embeddings is not None]

    def features(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: standardize(self.feature(name, users)) for name in self.feature_names}

    def contributions(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), items, weighted features): each weighted, standardised signal; they sum to the blend."""
        return torch.stack([w * standardize(self.feature(k, users)) for k, w in self.weights.items()], -1)

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        active = {k: w for k, w in self.weights.items() if w}
        if len(active) == 1:  # one signal: its raw scores rank the same as standardised ones
            return self.feature(next(iter(active)), users)
        return sum(w * standardize(self.feature(k, users)) for k, w in active.items())
