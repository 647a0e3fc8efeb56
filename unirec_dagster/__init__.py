"""unirec-dagster: raw interaction logs to graph-based recommendations, orchestrated by Dagster."""

__version__ = "0.1.0"
