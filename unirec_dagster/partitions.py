"""Print the partition range of the selected dataset, e.g. `2010-12-01...2011-01-15`.

Used by `make run` to backfill every day of a finished dataset; for a live log (no end_date)
the range ends yesterday.
"""

import datetime as dt

from unirec_dagster import settings
from unirec_dagster.datasets import load_spec


def partition_range() -> str:
    spec = load_spec(settings.dataset_spec_path())
    end = spec.events.end_date or (dt.date.today() - dt.timedelta(days=1))
    return f"{spec.events.start_date.isoformat()}...{end.isoformat()}"


if __name__ == "__main__":
    print(partition_range())
