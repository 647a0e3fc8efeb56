"""The temporal split, metrics and scoring of EVALUATION.md, and the evaluation step that writes eval.metrics."""
