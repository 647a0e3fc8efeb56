"""Fitting the served recommender at a cutoff: fine-tune with validation, blend, retrain."""

from unirec_dagster.training.blend import fit_blend
from unirec_dagster.training.fit import FittedRecommender, fit_recommender, train_variant

__all__ = ["FittedRecommender", "fit_blend", "fit_recommender", "train_variant"]
