"""The temporal split, metrics, simple signals and scoring of EVALUATION.md."""
