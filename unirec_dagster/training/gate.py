"""The quality gate: what serves a night, chosen on the validation window before the cutoff.

The two-stage ranker serves only when it beats every simple baseline (`ranking.baselines`:
popularity at several horizons and within the segment, EASE^R, RP3beta, EASE^R + recent popularity)
by more than noise: for each, the lower end of the 90% paired bootstrap interval of the ranker's
minus the baseline's Recall@20, over the validation users, is above zero. Otherwise the strongest
baseline on validation serves. A difference of a few users' worth on a window of sixty users is
no evidence; on a dataset that small, the fallback is the expected outcome, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unirec_dagster.evaluation.evaluate import rank, user_figures
from unirec_dagster.evaluation.metrics import paired_bootstrap
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.history import CutoffStats
from unirec_dagster.ranking.baselines import simple_baselines
from unirec_dagster.ranking.classic import TunedClassic
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.two_stage import TWO_STAGE

LEVEL = 0.9          # the bootstrap interval's coverage
METRIC = "recall@20"


def _means(figures: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: round(float(values.mean()), 6) if len(values) else 0.0 for name, values in figures.items()}


@dataclass
class GateResult:
    """Which policy serves and why. `intervals`: baseline -> the 90% paired bootstrap interval of the
    ranker's minus its validation Recall@20 (empty without a ranker)."""

    policy: str
    ranker: dict[str, float] | None            # the ranker's out-of-fold validation Recall@20, NDCG@20
    baseline: str                              # the strongest simple baseline on validation
    baselines: dict[str, dict[str, float]]     # every simple baseline's validation Recall@20, NDCG@20
    weights: dict[str, dict[str, float]]       # every simple baseline's Scorer weights
    users: int                                 # validation users the figures are means over
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    note: str = ""                             # why the ranker could not be fitted

    @classmethod
    def judge(cls, ranker: dict[str, torch.Tensor] | None, baselines: dict[str, dict[str, torch.Tensor]],
              weights: dict[str, dict[str, float]], note: str = "", seed: int = 0) -> GateResult:
        """`ranker`, `baselines[name]`: per-user validation figures ({"recall@20": (U,), "ndcg@20": (U,)})
        of the same users; None when no ranker could be fitted."""
        means = {name: _means(f) for name, f in baselines.items()}
        best = max(means, key=lambda n: (means[n][METRIC], means[n]["ndcg@20"]))
        users = len(next(iter(baselines.values()))[METRIC])
        intervals = ({name: paired_bootstrap(ranker[METRIC], f[METRIC], LEVEL, seed=seed) for name, f in baselines.items()}
                     if ranker is not None else {})
        wins = ranker is not None and all(low > 0 for low, _ in intervals.values())
        return cls(TWO_STAGE if wins else best, _means(ranker) if ranker is not None else None, best, means, weights,
                   users, intervals, note)

    @property
    def passed(self) -> bool:
        """The learned policy serves."""
        return self.policy == TWO_STAGE

    @property
    def baseline_metrics(self) -> dict[str, float]:
        return self.baselines[self.baseline]

    @property
    def served_weights(self) -> dict[str, float] | None:
        """The Scorer weights of the served baseline (None when the ranker serves)."""
        return None if self.passed else self.weights[self.policy]

    @property
    def reason(self) -> str:
        peer = f"{self.baseline} {self.baseline_metrics[METRIC]:.4f}"
        if self.ranker is None:
            return f"no ranker ({self.note}): serving the strongest simple baseline, {peer} validation Recall@20"
        low, high = self.intervals[self.baseline]
        margin = (f"two-stage ranker validation Recall@20 {self.ranker[METRIC]:.4f} against {peer} over "
                  f"{self.users:,} users, difference {low:+.4f}..{high:+.4f} ({LEVEL:.0%} paired bootstrap)")
        if self.passed:
            return f"{margin}: beats every simple baseline"
        losing = [name for name, (lo, _) in self.intervals.items() if lo <= 0]
        return (f"{margin}: not above noise against {', '.join(losing)}; serving {self.policy} instead")

    def to_manifest(self) -> dict:
        return {"passed": self.passed, "policy": self.policy, "reason": self.reason, "ranker": self.ranker,
                "baseline": self.baseline, "baseline_validation": self.baseline_metrics,
                "baselines": self.baselines, "weights": self.served_weights, "users": self.users,
                "level": LEVEL, "intervals": {name: list(i) for name, i in self.intervals.items()}}


def judge_on_validation(holdout: HoldoutPairs, signals: Signals, classic: TunedClassic, stats: CutoffStats,
                        ranker_top: torch.Tensor | None, note: str = "", log=None,
                        excluded: torch.Tensor | None = None) -> GateResult:
    """Rank the validation window's users (`holdout`, after the `signals`' cutoff) by every simple
    baseline, the classic peers with their tuned parameters, and judge the ranker's out-of-fold
    lists `ranker_top` (U, K) against them. `excluded`: the positions the ranker's lists could not
    hold (`TwoStageFit.excluded`: items nobody bought even by the cutoff among them), left out of
    the baselines' lists too, so both rank the same items: on a catalog file with many items that
    never sell, the ranker's figure alone would otherwise gain from knowing which ones do."""
    signals = signals.with_classic(classic.params)
    num_items = signals.data.num_items
    weights = simple_baselines(classic, has_segments=bool(stats.segments))
    figures = {name: user_figures(rank(Scorer(signals, w, stats=stats), holdout.users, never=excluded), holdout, num_items)
               for name, w in weights.items()}
    ranker = user_figures(ranker_top, holdout, num_items) if ranker_top is not None else None
    gate = GateResult.judge(ranker, figures, weights, note)
    if log:
        log("simple baselines on validation, Recall@20: "
            + ", ".join(f"{name} {m[METRIC]:.4f}" for name, m in gate.baselines.items()))
        log(f"quality gate: {gate.reason}")
    return gate
