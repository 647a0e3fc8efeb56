"""Scores of (user, item) for a block of users: the model's dot product, the simple signals, and
the blend of them. Each signal is standardised per user over the candidate items before it is
weighted, so blend weights compare like with like."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unirec_dagster.history import CutoffStats
from unirec_dagster.ranking.signals import Signals

BLEND_FEATURES = ("model", "co_purchase", "recent_popularity", "popularity")  # what the logit blend fits
STATS_FEATURES = ("buyers_7", "buyers_30", "buyers_90", "segment_popularity")  # read from the cutoff's statistics
FEATURES = (*BLEND_FEATURES, "ease", "rp3beta", *STATS_FEATURES)


def standardize_(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (sample) deviation per row, in place. Two passes, mean then the norm of the
    centred rows: exact, and about 20x faster on the CPU than torch.std_mean's one-pass algorithm."""
    x.sub_(x.mean(1, keepdim=True))
    std = torch.linalg.vector_norm(x, dim=1, keepdim=True) / max(x.shape[1] - 1, 1) ** 0.5
    return x.div_(std.clamp_(min=1e-6))


def impute_new_item_norms(vectors: torch.Tensor, interacted: torch.Tensor) -> torch.Tensor:
    """In the model's dot product an item's popularity lives in its vector's length: items many
    people buy grow long in training, items nobody has bought stay short. An item only listed in the
    catalog has an unknown popularity, not a low one: it keeps its direction (its text and
    attributes) and gets the mean length of the trained items, as the blend gives it the mean
    popularity."""
    new = ~interacted
    if not new.any() or new.all():
        return vectors
    vectors = vectors.clone()
    vectors[new] = torch.nn.functional.normalize(vectors[new], dim=-1) * vectors[interacted].norm(dim=-1).mean()
    return vectors


@dataclass
class Scorer:
    signals: Signals
    weights: dict[str, float]                       # feature -> weight; a baseline is one feature at 1
    embeddings: torch.Tensor | None = None          # (num_entities, dim) final model embeddings
    stats: CutoffStats | None = None                # the cutoff's statistics (popularity horizons, segments)
    _item_vectors: torch.Tensor | None = field(default=None, init=False, repr=False)
    _centered_items: torch.Tensor | None = field(default=None, init=False, repr=False)
    _item_covariance: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        unknown = set(self.weights) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {FEATURES}")
        if self.weights.get("model") and self.embeddings is None:
            raise ValueError("a blend with a model weight needs the model's embeddings")
        if self.stats is None and set(self.weights) & set(STATS_FEATURES):
            raise ValueError(f"{sorted(set(self.weights) & set(STATS_FEATURES))} need the cutoff's statistics (stats=)")
        if self.embeddings is not None:
            data = self.signals.data
            items = self.embeddings[data.items.to(self.embeddings.device)].float()
            self._item_vectors = impute_new_item_norms(items, data.interacted.to(items.device))
            self._centered_items = self._item_vectors - self._item_vectors.mean(0, keepdim=True)
            self._item_covariance = self._centered_items.T @ self._centered_items / max(len(self._item_vectors) - 1, 1)

    def feature(self, name: str, users: torch.Tensor, blended: bool = False) -> torch.Tensor:
        """The raw signal, (len(users), items); (1, items) for popularity, which is the same for every
        user. In a blend (`blended`), an item nobody has interacted with yet (listed in the catalog
        only) has an unknown popularity, not a zero one: it gets the mean, and the model decides."""
        data = self.signals.data
        if name == "model":
            return (self.embeddings[users.to(self.embeddings.device)] @ self._item_vectors.T).float().cpu()
        if name == "co_purchase":
            return self.signals.knn_scores(users)
        if name == "ease":
            return self.signals.ease_scores(users)
        if name == "rp3beta":
            return self.signals.rp3beta_scores(users)
        if name == "segment_popularity":   # the share of the user's segment's recent buyers who bought it
            return self.stats.segment_share[self.stats.segment_of(users)]
        source = (data.recent_popularity if name == "recent_popularity" else
                  self.stats.items[name] if name in STATS_FEATURES else data.popularity)
        popularity = torch.log1p(source)
        new = ~data.interacted
        if blended and new.any() and not new.all():
            popularity[new] = popularity[~new].mean()
        return popularity.unsqueeze(0)

    @property
    def feature_names(self) -> list[str]:
        """The features the blend is fitted over (the model's only with embeddings)."""
        return [name for name in BLEND_FEATURES if name != "model" or self.embeddings is not None]

    @property
    def active_features(self) -> list[str]:
        """The features with a non-zero weight, in the order of `parts`."""
        return [name for name, w in self.weights.items() if w]

    def features(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every standardised feature as a (len(users), items) view (for fitting the blend)."""
        return {name: standardize_(self.feature(name, users, blended=True)).expand(len(users), -1)
                for name in self.feature_names}

    def parts(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each weighted, standardised signal, (len(users) or 1, items); they sum to the blend. Only a
        blend of several signals gives unsold catalog items the mean popularity: a popularity baseline
        served alone ranks them as it was judged, last."""
        blended = len(self.active_features) > 1
        return {name: self._standardized_model(users).mul_(self.weights[name]) if name == "model"
                else standardize_(self.feature(name, users, blended=blended)).mul_(self.weights[name])
                for name in self.active_features}

    def _standardized_model(self, users: torch.Tensor) -> torch.Tensor:
        """standardize_(feature("model")) without a pass over the score block: a user's scores e.v_i
        over the items have mean e.mean(v) and variance e^T C e (C: the items' covariance), so the
        standardised scores are one product (e / std) @ (v_i - mean(v))."""
        e = self.embeddings[users.to(self.embeddings.device)].float()
        std = ((e @ self._item_covariance) * e).sum(1, keepdim=True).clamp(min=0).sqrt().clamp(min=1e-6)
        return ((e / std) @ self._centered_items.T).cpu()

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), items), a fresh tensor the caller may write into."""
        active = self.active_features
        if len(active) == 1 and self.weights[active[0]] > 0:  # raw scores rank as the standardised ones
            return self.feature(active[0], users).expand(len(users), -1).clone()
        return total(self.parts(users), len(users))


def total(parts: dict[str, torch.Tensor], num_users: int) -> torch.Tensor:
    """Sum of broadcastable parts into one new (num_users, items) tensor."""
    first = next(iter(parts.values()))
    out = torch.zeros(num_users, first.shape[1], dtype=first.dtype)
    for part in parts.values():
        out += part
    return out
