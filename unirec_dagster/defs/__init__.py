"""The Dagster layer only: thin assets, checks, schedules and resources over plain functions."""
