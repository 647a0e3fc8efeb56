"""The daily partition calendar, from the dataset spec selected by UNIREC_DATASET.

The calendar is deployment configuration: it is read when the code location loads (Dagster needs
it to draw partitions), while the assets read the spec itself through the `dataset` resource when
a run starts.
"""

import datetime as dt

import dagster as dg

from unirec_dagster import settings
from unirec_dagster.datasets import load_spec

_calendar = load_spec(settings.dataset_spec_path()).events

_end = (_calendar.end_date + dt.timedelta(days=1)).isoformat() if _calendar.end_date else None
# Dagster's end_date is exclusive; the spec's is the last day with data.
daily_partitions = dg.DailyPartitionsDefinition(start_date=_calendar.start_date.isoformat(), end_date=_end)
# Pretraining's calendar: weeks from Sunday to Saturday, each partition complete on its Saturday.
weekly_partitions = dg.WeeklyPartitionsDefinition(start_date=_calendar.start_date.isoformat(), end_date=_end)


def partition_date(context: dg.AssetExecutionContext) -> dt.date:
    """The day of a daily partition; the last day (Saturday) of a weekly one."""
    return (context.partition_time_window.end - dt.timedelta(days=1)).date()


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days of the partition, or partition range, a run materializes."""
    window = context.partition_time_window
    days = (window.end - window.start).days
    return [window.start.date() + dt.timedelta(days=i) for i in range(days)]
