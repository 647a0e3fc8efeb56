"""The dataset spec selected by UNIREC_DATASET and the daily partitions it implies.

Loaded once when the code location loads: the partition calendar comes from the spec.
"""

import datetime as dt

import dagster as dg

from unirec_dagster import settings
from unirec_dagster.datasets import load_spec

SPEC = load_spec(settings.dataset_spec_path())

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=SPEC.events.start_date.isoformat(),
    # Dagster's end_date is exclusive; the spec's is the last day with data.
    end_date=(SPEC.events.end_date + dt.timedelta(days=1)).isoformat() if SPEC.events.end_date else None,
)


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days of the partition, or partition range, a run materializes."""
    window = context.partition_time_window
    days = (window.end - window.start).days
    return [window.start.date() + dt.timedelta(days=i) for i in range(days)]
