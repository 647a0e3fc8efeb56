"""The second stage: a LightGBM LambdaRank model over the candidates' features.

The number of boosting rounds is chosen by cross-validation over users: the validation users are
split into folds (whole users, so a user's candidates never sit on both sides), one booster per
fold grows round by round, and training stops when NDCG@20 averaged over the held-out folds has
not improved for `patience` rounds. Each held-out user is scored by the booster that did not see
them (out-of-fold scores: an honest validation figure for the quality gate), and the served model
is then trained on every user for the chosen rounds. Deterministic for a seed and thread count.

Saved as LightGBM's own text format (`model_to_string`), never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
from pydantic import BaseModel, Field


class TooFewExamples(ValueError):
    """The validation window has too few users with a bought candidate to fit a ranker on."""


class RankerConfig(BaseModel):
    """LightGBM settings; the defaults were chosen on validation windows of Online Retail cutoffs
    2011-09-28..10-27 (small trees generalise best from a few thousand users)."""

    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(7, ge=2)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    max_rounds: int = Field(600, ge=1, description="Upper bound of boosting rounds; cross-validation chooses fewer.")
    patience: int = Field(40, ge=1, description="Stop when the folds' mean NDCG@20 has not improved for this many rounds.")
    folds: int = Field(5, ge=2, description="Folds of validation users for choosing the rounds.")
    seed: int = 0
    threads: int = Field(0, ge=0, description="LightGBM threads (0: OpenMP's default, all cores).")

    def params(self) -> dict:
        return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [20], "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
                "feature_fraction": self.feature_fraction, "bagging_fraction": self.bagging_fraction,
                "bagging_freq": 1, "lambda_l2": self.lambda_l2, "lambdarank_truncation_level": 20,
                "seed": self.seed, "deterministic": True, "force_row_wise": True, "num_threads": self.threads,
                "verbosity": -1}


@dataclass
class Ranker:
    booster: lgb.Booster
    feature_names: list[str]
    rounds: int
    cv_ndcg: float                      # NDCG@20 of the held-out folds at the chosen round (LightGBM's own)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(features, num_threads=self.booster.params.get("num_threads", 0)))

    def importances(self) -> dict[str, float]:
        """Total gain of each feature's splits, as a share of all gain."""
        gain = self.booster.feature_importance("gain")
        total = float(gain.sum()) or 1.0
        return {name: round(float(g) / total, 4) for name, g in sorted(zip(self.feature_names, gain),
                                                                          key=lambda kv: -kv[1])}

    def to_text(self) -> str:
        return self.booster.model_to_string()

    @classmethod
    def from_text(cls, text: str, rounds: int, cv_ndcg: float) -> Ranker:
        booster = lgb.Booster(model_str=text)
        return cls(booster, booster.feature_name(), rounds, cv_ndcg)


@dataclass
class RankerFit:
    ranker: Ranker
    out_of_fold: np.ndarray             # (n,) each row scored by the fold booster that did not see its user
    curve: list[float]                  # the folds' mean NDCG@20 per round


def fit_ranker(features: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray, feature_names: list[str],
               config: RankerConfig = RankerConfig(), log=None) -> RankerFit:
    """`features` (n, F) rows grouped by user in order, `group_sizes` (users,) their counts, `labels`
    (n,) 1 for a pair the user bought in the window. Users without any positive candidate carry no
    LambdaRank gradient: they are left out of training, and scored out of fold like the others."""
    if len(feature_names) != features.shape[1]:
        raise ValueError(f"{features.shape[1]} feature columns but {len(feature_names)} names")
    starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    positives = np.add.reduceat(labels, starts) if len(labels) else np.zeros(0)
    useful = np.nonzero((group_sizes > 0) & (positives > 0))[0]
    if len(useful) < config.folds:
        raise TooFewExamples(f"only {len(useful)} validation users have a bought item among their candidates; the "
                         f"ranker needs at least {config.folds} (one per fold)")
    rng = np.random.default_rng(config.seed)
    fold_of_user = np.full(len(group_sizes), -1)
    fold_of_user[useful] = rng.permutation(len(useful)) % config.folds
    unused = np.nonzero(fold_of_user < 0)[0]
    fold_of_user[unused] = rng.permutation(len(unused)) % config.folds  # scored out of fold too
    row_fold = np.repeat(fold_of_user, group_sizes)
    row_useful = np.repeat(np.isin(np.arange(len(group_sizes)), useful), group_sizes)
    params = config.params()

    def dataset(rows: np.ndarray, users: np.ndarray, reference=None) -> lgb.Dataset:
        return lgb.Dataset(features[rows], labels[rows], group=group_sizes[users], feature_name=feature_names,
                           reference=reference, free_raw_data=False)

    boosters = []
    for fold in range(config.folds):
        train_users = useful[fold_of_user[useful] != fold]
        valid_users = useful[fold_of_user[useful] == fold]
        train = dataset(np.nonzero((row_fold != fold) & row_useful)[0], train_users)
        valid = dataset(np.nonzero((row_fold == fold) & row_useful)[0], valid_users, reference=train)
        booster = lgb.Booster(params, train)
        booster.add_valid(valid, "held_out")
        boosters.append(booster)
    curve: list[float] = []
    best_round, best = 0, -np.inf
    for round_ in range(1, config.max_rounds + 1):
        scores = []
        for booster in boosters:
            booster.update()
            scores.append(booster.eval_valid()[0][2])
        curve.append(float(np.mean(scores)))
        if curve[-1] > best:
            best_round, best = round_, curve[-1]
        elif round_ - best_round >= config.patience:
            break
        if log and round_ % 50 == 0:
            log(f"ranker cross-validation: round {round_}, held-out NDCG@20 {curve[-1]:.4f} (best {best:.4f} "
                f"at {best_round})")
    out_of_fold = np.zeros(len(labels))
    for fold, booster in enumerate(boosters):
        rows = np.nonzero(row_fold == fold)[0]
        if len(rows):
            out_of_fold[rows] = booster.predict(features[rows], num_iteration=best_round)
    final = lgb.train(params, dataset(np.nonzero(row_useful)[0], useful), num_boost_round=best_round)
    return RankerFit(Ranker(final, feature_names, best_round, best), out_of_fold, curve)
