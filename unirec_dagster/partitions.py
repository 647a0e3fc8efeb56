"""Print the partition range of the selected dataset, e.g. `2010-12-01...2011-01-15`; with --last
its last partition; with --historic the last partition that still has a full test window after it;
with --week (beside --last or --historic) the key of the newest complete week ending on or before
that day (pretraining's weekly partition), with --week-end that week's last day (its Saturday).

Used by `make run` to backfill every day of a finished dataset; for a live log (no end_date)
the range ends yesterday.
"""

import datetime as dt
import sys

from unirec_dagster import settings
from unirec_dagster.datasets import last_complete_week, load_spec
from unirec_dagster.evaluation.split import TEST_WINDOW_DAYS


def partition_range() -> tuple[dt.date, dt.date]:
    spec = load_spec(settings.dataset_spec_path())
    return spec.events.start_date, spec.events.end_date or (dt.date.today() - dt.timedelta(days=1))


if __name__ == "__main__":
    first, last = partition_range()
    args = sys.argv[1:]
    day = last if "--last" in args else last - dt.timedelta(days=TEST_WINDOW_DAYS) if "--historic" in args else None
    if day is None:
        print(f"{first.isoformat()}...{last.isoformat()}")
    elif "--week" in args or "--week-end" in args:
        week = dt.date.fromisoformat(last_complete_week(day))
        print((week + dt.timedelta(days=6) if "--week-end" in args else week).isoformat())
    else:
        print(day.isoformat())
