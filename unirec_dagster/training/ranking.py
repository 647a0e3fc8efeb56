"""Fitting the two-stage ranker on the validation window, with everything chosen before the cutoff.

At the validation cutoff V (= C - validation_days) the candidates and features of every validation
user are built from what was known at V (the graph model of the validation fit, the classic peers,
the statistics), and labelled by what the user bought in [V, C). Items first sold inside that
window are catalog items at V (`load_training(catalog_until=C)`), so the ranker also learns where
items nobody has bought yet belong. The ranker's rounds are chosen by cross-validation over these
users, and its validation figure is the out-of-fold ranking of every validation user (a user with
no bought item among the candidates scores zero), comparable with the classic peers' on the same
window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, Field

from unirec_dagster.evaluation.evaluate import slice_metrics
from unirec_dagster.evaluation.metrics import KS
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.ranking.candidates import CandidateConfig, CutoffInputs
from unirec_dagster.ranking.ranker import RankerConfig, RankerFit, TooFewExamples, fit_ranker
from unirec_dagster.ranking.two_stage import Examples, TwoStage

TWO_STAGE = "two-stage ranker"   # the served policy's name when the ranker serves
RANKER_FILE = "ranker.txt"        # the ranker in a fine-tuned checkpoint, LightGBM's text format


class RankingSettings(BaseModel):
    """The two ranking stages: candidate lists, the ranker, and which inputs it may read (the
    switches exist for the ablations that measure what each input is worth)."""

    candidates: CandidateConfig = CandidateConfig()
    ranker: RankerConfig = RankerConfig()
    use_model: bool = Field(True, description="The graph model's candidates and scores are ranker inputs.")
    use_attributes: bool = Field(True, description="KG attribute/keyword overlap with the history is a feature.")


@dataclass
class TwoStageFit:
    fit: RankerFit
    validation: dict[str, float]              # out-of-fold Recall@20, NDCG@20 of every validation user
    candidate_recall: dict[str, float]        # share of the window's pairs each generator (and all: "total") proposed
    candidates_per_user: float
    examples: int
    users: int


def _labels(examples: Examples, holdout: HoldoutPairs, first_row: int, num_items: int) -> torch.Tensor:
    """(n,) 1 where the example's (user, item) is a pair of the window."""
    ranked = holdout.pair_items >= 0
    wanted = holdout.pair_users[ranked] * num_items + holdout.pair_items[ranked]
    keys = (examples.candidates.rows + first_row) * num_items + examples.candidates.items
    return torch.isin(keys, wanted).float()


def top_by_score(scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, num_users: int,
                 k: int) -> torch.Tensor:
    """(num_users, k) items of each user's k best-scored pairs, -1 where a user has fewer."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]                     # by user, best first
    rows, items = rows[order], items[order]
    counts = torch.bincount(rows, minlength=num_users)
    place = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    top = torch.full((num_users, k), -1, dtype=torch.long)
    keep = place < k
    top[rows[keep], place[keep]] = items[keep]
    return top


def fit_two_stage(inputs: CutoffInputs, holdout: HoldoutPairs, config: CandidateConfig = CandidateConfig(),
                  ranker_config: RankerConfig = RankerConfig(), never: torch.Tensor | None = None,
                  log=None) -> TwoStageFit:
    """Fit the ranker on `holdout`, the window after inputs' cutoff, for its users."""
    if not len(holdout.users):
        raise TooFewExamples(f"no validation users after {inputs.signals.data.cutoff}: nothing to fit a ranker on")
    stage = TwoStage(inputs, config, never=never)
    num_items = inputs.signals.data.num_items
    features, labels, groups, users, items, firsts = [], [], [], [], [], 0
    hits: dict[str, float] = {}
    for examples in stage.examples(holdout.users):
        y = _labels(examples, holdout, firsts, num_items)
        for j, g in enumerate(examples.candidates.generators):
            hits[g] = hits.get(g, 0.0) + float(y[examples.candidates.ranks[:, j] <= config.size(g)].sum())
        hits["total"] = hits.get("total", 0.0) + float(y.sum())
        features.append(examples.features.numpy())
        labels.append(y.numpy())
        groups.append(examples.group_sizes())
        users.append(examples.candidates.rows + firsts)
        items.append(examples.candidates.items)
        firsts += len(examples.users)
    features_, labels_, groups_ = np.concatenate(features), np.concatenate(labels), np.concatenate(groups)
    pairs = max(len(holdout.pair_items), 1)
    if log:
        log(f"ranker examples at {inputs.signals.data.cutoff}: {len(holdout.users):,} users, {len(labels_):,} "
            f"candidates ({len(labels_) / max(len(holdout.users), 1):.0f} per user), holding "
            f"{hits.get('total', 0) / pairs:.1%} of the window's {pairs:,} pairs")
    fit = fit_ranker(features_, labels_, groups_, stage.feature_names, ranker_config, log=log)
    top = top_by_score(torch.from_numpy(fit.out_of_fold), torch.cat(users), torch.cat(items), len(holdout.users),
                       max(KS))
    validation = slice_metrics(top, holdout, inputs.signals.data, slices=False)[0].metrics
    if log:
        log(f"ranker: {fit.ranker.rounds} rounds, out-of-fold validation Recall@20 {validation['recall@20']:.4f}, "
            f"NDCG@20 {validation['ndcg@20']:.4f}")
    return TwoStageFit(fit, {"recall@20": validation["recall@20"], "ndcg@20": validation["ndcg@20"]},
                       {g: round(v / pairs, 4) for g, v in hits.items()}, len(labels_) / max(len(holdout.users), 1),
                       len(labels_), len(holdout.users))
