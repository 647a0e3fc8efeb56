"""Print the partition range of the selected dataset, e.g. `2010-12-01...2011-01-15`; with --last
its last partition; with --historic the last partition that still has a full test window after it.

Used by `make run` to backfill every day of a finished dataset; for a live log (no end_date)
the range ends yesterday.
"""

import datetime as dt
import sys

from unirec_dagster import settings
from unirec_dagster.datasets import load_spec
from unirec_dagster.evaluation.split import TEST_WINDOW_DAYS


def partition_range() -> tuple[dt.date, dt.date]:
    spec = load_spec(settings.dataset_spec_path())
    return spec.events.start_date, spec.events.end_date or (dt.date.today() - dt.timedelta(days=1))


if __name__ == "__main__":
    first, last = partition_range()
    if "--last" in sys.argv[1:]:
        print(last.isoformat())
    elif "--historic" in sys.argv[1:]:
        print((last - dt.timedelta(days=TEST_WINDOW_DAYS)).isoformat())
    else:
        print(f"{first.isoformat()}...{last.isoformat()}")
