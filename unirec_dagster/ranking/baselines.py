"""The simple baselines a learned policy must beat before it serves, and what serves when it does
not: popularity over the whole history, over several recent horizons and within the user's segment
(the first user attribute), and the classic item-item peers tuned on the validation window
(`ranking.classic`). Each is a `Scorer` weighting; on a small or unfamiliar dataset one of them is
often the strongest thing to serve, so the quality gate (`training.gate`) compares against all."""

from __future__ import annotations

from unirec_dagster.ranking.classic import CLASSIC, TunedClassic

MOST_POPULAR, RECENT_POPULAR, SEGMENT_POPULAR = "MostPopular", "RecentPopular", "SegmentPopular (90 days)"
POPULARITY = {
    MOST_POPULAR: {"popularity": 1.0},
    RECENT_POPULAR: {"recent_popularity": 1.0},            # EVALUATION.md's: the last 10% of the training span
    "RecentPopular (7 days)": {"buyers_7": 1.0},
    "RecentPopular (30 days)": {"buyers_30": 1.0},
    "RecentPopular (90 days)": {"buyers_90": 1.0},
    SEGMENT_POPULAR: {"segment_popularity": 1.0},
}
ITEM_KNN = {"ItemKNN": {"co_purchase": 1.0}}   # a reference row of the evaluation, not a gate baseline


def simple_baselines(classic: TunedClassic | None, has_segments: bool) -> dict[str, dict[str, float]]:
    """Name -> Scorer weights of every simple baseline at a cutoff: the popularity family (the
    segment's only where users have a segment) and, once tuned, the classic peers."""
    out = {name: w for name, w in POPULARITY.items() if name != SEGMENT_POPULAR or has_segments}
    if classic is not None:
        out |= {name: classic.weights(name) for name in CLASSIC}
    return out
