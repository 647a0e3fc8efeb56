"""The classic peers tuned on the validation window before the cutoff, as EVALUATION.md's reference
figures were: EASE^R's λ, RP3beta's α and β, and the weight of z-scored recent popularity added to
z-scored EASE^R. Every figure the project reports stands beside the strongest of them, and the
quality gate serves the strongest when the learned policy does not beat it."""

from __future__ import annotations

from unirec_dagster.evaluation.evaluate import evaluate
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.ranking.classic import EASE, EASE_RECENT, RP3BETA, ClassicParams, TunedClassic
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals

EASE_LAMBDAS = (25, 50, 100, 200, 400, 800, 1600, 3200)
RP3_ALPHAS = (0.5, 0.75, 1.0)
RP3_BETAS = (0.0, 0.2, 0.4, 0.6)
RECENT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _score(signals: Signals, weights: dict[str, float], holdout: HoldoutPairs) -> dict[str, float]:
    metrics = evaluate(Scorer(signals, weights), holdout, slices=False)[0].metrics
    return {"recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"]}


def tune_classic(signals: Signals, holdout: HoldoutPairs, log=None) -> TunedClassic:
    """Grid search on the validation window `holdout` (after signals.data.cutoff): λ first, then α and
    β, then the recent-popularity weight on the chosen EASE^R, each by Recall@20."""
    def best_of(candidates, score):
        scored = [(score(c), c) for c in candidates]
        return max(scored, key=lambda sc: (sc[0]["recall@20"], sc[0]["ndcg@20"]))

    ease_metrics, lam = best_of(EASE_LAMBDAS, lambda lam: _score(
        signals.with_classic(ClassicParams(ease_lambda=lam)), {"ease": 1.0}, holdout))
    rp3_metrics, (alpha, beta) = best_of([(a, b) for a in RP3_ALPHAS for b in RP3_BETAS], lambda ab: _score(
        signals.with_classic(ClassicParams(rp3_alpha=ab[0], rp3_beta=ab[1])), {"rp3beta": 1.0}, holdout))
    tuned = signals.with_classic(ClassicParams(lam, alpha, beta))
    recent_metrics, weight = best_of(RECENT_WEIGHTS, lambda w: _score(
        tuned, {"ease": 1.0, "recent_popularity": w}, holdout))
    result = TunedClassic(tuned.classic, weight, {EASE: ease_metrics, RP3BETA: rp3_metrics, EASE_RECENT: recent_metrics})
    if log:
        log(f"classic peers on validation: EASE^R λ={lam:g} {ease_metrics['recall@20']:.4f}, RP3beta α={alpha:g} "
            f"β={beta:g} {rp3_metrics['recall@20']:.4f}, EASE^R + {weight:g} x recent popularity "
            f"{recent_metrics['recall@20']:.4f} (Recall@20)")
    return result
