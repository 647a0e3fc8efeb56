"""The second stage: a LightGBM LambdaRank model over the candidates' features.

The number of boosting rounds is chosen by cross-validation over users: the validation users are
split into folds (whole users, so a user's candidates never sit on both sides), one booster per
fold grows round by round, and training stops when NDCG@20 averaged over the held-out folds has
not improved for `patience` rounds. Each held-out user is scored by the booster that did not see
them (out-of-fold scores: an honest validation figure for the quality gate), and the served model
is then trained on every user for the chosen rounds. Deterministic for a seed and thread count.

Saved as LightGBM's own text format (`model_to_string`), never pickled. Served through lleaves,
which compiles the same text to native code (`CompiledTrees`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import lightgbm as lgb
import lleaves
import numpy as np
import torch
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
    small_data_users: int = Field(
        300, ge=0, description="With fewer validation users who bought a candidate, a smaller model (SMALL_DATA: "
        "3 leaves, 20 rows a leaf, stronger regularisation, learning rate 0.1) is cross-validated beside these "
        "settings and the better held-out NDCG@20 is kept. 0: never. On Online Retail's 748 users the two tied "
        "(0.2114 against 0.2107 at 2011-11-11) with the smaller at 398 rounds against 230: above 300 users the "
        "second cross-validation costs nightly and serving time for nothing.")

    def for_users(self, users: int) -> list[RankerConfig]:
        """The settings cross-validated for a window of `users` useful users: these, and on small
        windows the smaller model too (deep trees with 50-row leaves overfit a few dozen users)."""
        return [self] + ([self.model_copy(update=SMALL_DATA)] if users < self.small_data_users else [])

    def params(self) -> dict:
        return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [20], "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
                "feature_fraction": self.feature_fraction, "bagging_fraction": self.bagging_fraction,
                "bagging_freq": 1, "lambda_l2": self.lambda_l2, "lambdarank_truncation_level": 20,
                "seed": self.seed, "deterministic": True, "force_row_wise": True, "num_threads": self.threads,
                "verbosity": -1}


# Chosen on small validation windows (the sample's, a few dozen users): fewer, shallower trees that a
# handful of purchases can support.
SMALL_DATA = {"num_leaves": 3, "min_data_in_leaf": 20, "learning_rate": 0.1, "feature_fraction": 0.5,
              "lambda_l2": 10.0}


class CompiledTrees:
    """A LightGBM model compiled to native code by lleaves (siboehm/lleaves): the booster's own predictions
    (in double precision, as LightGBM compares its thresholds) about 6x faster on the CPU at the
    rounds the ranker chooses (BENCHMARKS.md), for a compile of about a second on first use. The
    nightly ranking scores some 400-500 candidates per user: through LightGBM the trees were most of
    its time; compiled, they are about a tenth of it."""

    ROWS = 2**18  # rows converted to float64 at a time: bounds the copy to 80 MiB at 40 features

    def __init__(self, booster: lgb.Booster, threads: int = 0):
        self.booster = booster
        # the booster's own setting, else (0) as many as the rest of the serving uses when it predicts
        self.threads = threads or int(booster.params.get("num_threads", 0) or 0)
        self.model: lleaves.Model | None = None

    def _compiled(self) -> lleaves.Model:
        if self.model is None:
            with tempfile.TemporaryDirectory() as folder:   # lleaves reads a model file, twice
                path = Path(folder) / "model.txt"
                self.booster.save_model(path)
                model = lleaves.Model(model_file=str(path))
                model.compile()
            self.model = model
        return self.model

    def predict(self, features: np.ndarray) -> np.ndarray:
        model, out = self._compiled(), np.empty(len(features))
        if features.dtype == np.float64 and features.flags.c_contiguous:   # read as is
            return model.predict(features, n_jobs=self.threads or torch.get_num_threads()) if len(features) else out
        # One float64 buffer, filled chunk by chunk: a fresh array per chunk cost as much as the trees.
        buffer = torch.empty((min(self.ROWS, len(features)), features.shape[1]), dtype=torch.float64)
        for start in range(0, len(features), self.ROWS):
            part = features[start:start + self.ROWS]
            chunk = buffer[:len(part)].copy_(torch.from_numpy(part))
            out[start:start + len(part)] = model.predict(chunk.numpy(), n_jobs=self.threads or torch.get_num_threads())
        return out


@dataclass
class Ranker:
    booster: lgb.Booster
    feature_names: list[str]
    rounds: int
    cv_ndcg: float                      # NDCG@20 of the held-out folds at the chosen round (LightGBM's own)
    trees: CompiledTrees = field(init=False, repr=False)

    def __post_init__(self):
        self.trees = CompiledTrees(self.booster)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The booster's scores of `features` (n, F), through its compiled form."""
        return self.trees.predict(features)

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
    config: RankerConfig | None = None  # the settings kept (`RankerConfig.for_users`)


def fit_ranker(features: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray, feature_names: list[str],
               config: RankerConfig = RankerConfig(), log=None, group_keys: np.ndarray | None = None,
               train_groups: np.ndarray | None = None) -> RankerFit:
    """`features` (n, F) rows grouped by user in order, `group_sizes` (groups,) their counts, `labels`
    (n,) 1 for a pair the user bought in the window. Users without any positive candidate carry no
    LambdaRank gradient: they are left out of training, and scored out of fold like the others.
    `group_keys` (groups,) says which user each group is when a user appears in several groups
    (as is, and with some items' history hidden): a user's groups always share a fold.
    `train_groups` (groups,) bool: the groups that train; the others are only scored out of fold."""
    if len(feature_names) != features.shape[1]:
        raise ValueError(f"{features.shape[1]} feature columns but {len(feature_names)} names")
    starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    positives = np.add.reduceat(labels, starts) if len(labels) else np.zeros(0)
    trains = np.ones(len(group_sizes), dtype=bool) if train_groups is None else np.asarray(train_groups, dtype=bool)
    useful = np.nonzero((group_sizes > 0) & (positives > 0) & trains)[0]
    keys = np.arange(len(group_sizes)) if group_keys is None else np.asarray(group_keys)
    useful_keys = np.unique(keys[useful])
    if len(useful_keys) < config.folds:
        raise TooFewExamples(f"only {len(useful_keys)} validation users have a bought item among their candidates; "
                             f"the ranker needs at least {config.folds} (one per fold)")
    rng = np.random.default_rng(config.seed)
    fold_of_key = np.full(int(keys.max()) + 1 if len(keys) else 0, -1)
    fold_of_key[useful_keys] = rng.permutation(len(useful_keys)) % config.folds
    unused = np.setdiff1d(np.unique(keys), useful_keys)
    fold_of_key[unused] = rng.permutation(len(unused)) % config.folds  # scored out of fold too
    fold_of_user = fold_of_key[keys]
    row_fold = np.repeat(fold_of_user, group_sizes)
    row_useful = np.repeat(np.isin(np.arange(len(group_sizes)), useful), group_sizes)

    def dataset(rows: np.ndarray, users: np.ndarray, reference=None) -> lgb.Dataset:
        return lgb.Dataset(features[rows], labels[rows], group=group_sizes[users], feature_name=feature_names,
                           reference=reference, free_raw_data=False)

    def cross_validate(params: dict) -> tuple[list[lgb.Booster], list[float], int]:
        """One booster per fold grown round by round until the folds' mean NDCG@20 stops improving."""
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
        return boosters, curve, best_round

    tried = []
    for candidate in config.for_users(len(useful_keys)):
        boosters, curve, best_round = cross_validate(candidate.params())
        tried.append((curve[best_round - 1], candidate, boosters, curve, best_round))
    best, chosen, boosters, curve, best_round = max(tried, key=lambda t: t[0])
    if log and len(tried) > 1:
        log(f"ranker settings for {len(useful_keys)} users: "
            + ", ".join(f"{c.num_leaves} leaves, {c.min_data_in_leaf} a leaf, rate {c.learning_rate:g}: NDCG@20 "
                        f"{ndcg:.4f} at {r} rounds" for ndcg, c, _, _, r in tried)
            + f"; kept {chosen.num_leaves} leaves")
    out_of_fold = np.zeros(len(labels))
    for fold, booster in enumerate(boosters):
        rows = np.nonzero(row_fold == fold)[0]
        if len(rows):
            out_of_fold[rows] = booster.predict(features[rows], num_iteration=best_round)
    final = lgb.train(chosen.params(), dataset(np.nonzero(row_useful)[0], useful), num_boost_round=best_round)
    return RankerFit(Ranker(final, feature_names, best_round, best), out_of_fold, curve, chosen)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def platt_scaling(scores: np.ndarray, labels: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """(scale, shift) with P(bought) = sigmoid(scale * score + shift), by Newton's method on the log
    loss (Platt 1999): turns the ranker's out-of-fold scores into purchase probabilities."""
    x = np.stack([scores, np.ones_like(scores)], 1).astype(np.float64)
    w = np.zeros(2)
    for _ in range(steps):
        p = _sigmoid(x @ w)
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (p - labels))
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), float(w[1])


@dataclass
class NewItemPlacement:
    """Where items nobody has bought go in a list: a LightGBM classifier of P(bought) trained only
    on such items (the items whose history the ranker's second copy of examples hid, and those first
    sold in the window), beside the ranker's scores of the other candidates turned into the same
    probability (Platt scaling of its out-of-fold scores). A list is then ordered by probability:
    which new items, and above which bought items, is what the validation window taught."""

    booster: lgb.Booster
    rounds: int
    scale: float
    shift: float
    every: int = 0          # 0: lists ordered by probability; n: ranks n, 2n, ... hold the likeliest new items
    out_of_fold: np.ndarray | None = None   # (new-item candidates,) each scored by the fold model that did not see its user
    trees: CompiledTrees = field(init=False, repr=False)

    def __post_init__(self):
        self.trees = CompiledTrees(self.booster)

    def ranker_probability(self, ranker_scores: np.ndarray) -> np.ndarray:
        """The ranker's scores as purchase probabilities (its Platt scaling)."""
        return _sigmoid(self.scale * ranker_scores + self.shift)

    def probabilities(self, features: np.ndarray, ranker_scores: np.ndarray, is_new: np.ndarray) -> np.ndarray:
        out = self.ranker_probability(ranker_scores)
        if is_new.any():
            out[is_new] = self.trees.predict(features[is_new])
        return out

    def to_text(self) -> str:
        return self.booster.model_to_string()

    @classmethod
    def from_text(cls, text: str, rounds: int, scale: float, shift: float, every: int = 0) -> NewItemPlacement:
        return cls(lgb.Booster(model_str=text), rounds, scale, shift, every)


MIN_NEW_ITEM_POSITIVES = 20  # fewer bought new-item candidates than this teach nothing reliable


def fit_new_item_placement(features: np.ndarray, labels: np.ndarray, user_keys: np.ndarray, feature_names: list[str],
                           ranker_scores: np.ndarray, ranker_labels: np.ndarray,
                           config: RankerConfig = RankerConfig(), log=None) -> NewItemPlacement | None:
    """`features`, `labels`, `user_keys` (n,): new-item candidates of the validation users; the
    rounds are chosen by cross-validation over whole users. `ranker_scores`, `ranker_labels`: the
    ranker's out-of-fold scores of every candidate and their labels, for the Platt scaling. None
    when the window has too few bought new-item candidates."""
    positives = int(labels.sum())
    if positives < MIN_NEW_ITEM_POSITIVES:
        if log:
            log(f"new-item placement: {positives} bought new-item candidates (< {MIN_NEW_ITEM_POSITIVES}): "
                f"new items stay with the ranker's own scores")
        return None
    params = {**config.params(), "objective": "binary", "metric": "binary_logloss"}
    for key in ("eval_at", "lambdarank_truncation_level"):
        params.pop(key)
    users, user_of_row = np.unique(user_keys, return_inverse=True)
    row_fold = (np.random.default_rng(config.seed).permutation(len(users)) % config.folds)[user_of_row]
    folds = [(np.nonzero(row_fold != f)[0], np.nonzero(row_fold == f)[0]) for f in range(config.folds)]
    data = lgb.Dataset(features, labels, feature_name=feature_names, free_raw_data=False)
    curve = lgb.cv(params, data, num_boost_round=config.max_rounds, folds=folds, return_cvbooster=True,
                   callbacks=[lgb.early_stopping(config.patience, verbose=False)])
    losses = cast(list[float], curve["valid binary_logloss-mean"])
    rounds = len(losses)
    out_of_fold = np.zeros(len(labels))
    for (_, held_out), fold_booster in zip(folds, cast(lgb.CVBooster, curve["cvbooster"]).boosters):
        out_of_fold[held_out] = fold_booster.predict(features[held_out], num_iteration=rounds)
    booster = lgb.train(params, data, num_boost_round=rounds)
    scale, shift = platt_scaling(ranker_scores, ranker_labels)
    if log:
        log(f"new-item placement: {len(labels):,} new-item candidates ({positives:,} bought), {rounds} rounds, "
            f"held-out log loss {losses[-1]:.4f}; ranker scores to probabilities: "
            f"sigmoid({scale:.3f} x score {shift:+.3f})")
    return NewItemPlacement(booster, rounds, scale, shift, out_of_fold=out_of_fold)
