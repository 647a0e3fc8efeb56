"""Show a user's latest recommendations with titles and reasons.

    python -m unirec_dagster.show --user 12347 [--date 2011-11-24] [--limit 20]

While a Dagster run holds the warehouse file (DuckDB lets one process open it for writing and no
one else meanwhile), the partition is read from its published Parquet snapshot instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import duckdb

from unirec_dagster import settings
from unirec_dagster.serving.recommend import published_dir
from unirec_dagster.warehouse import connect, rows

QUERY = """SELECT rank, item_id, coalesce(title, ''), score, reason, model_version FROM {source}
           WHERE partition_date = $d AND user_id = $u ORDER BY rank LIMIT $n"""


MAX_LIMIT = 10_000   # far above any list the serving step writes (its K); DuckDB's LIMIT takes 64-bit numbers


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is not a number of recommendations from 1 to {MAX_LIMIT:,}")
    return value


def _from_warehouse(path: str, user: str, day: dt.date | None, limit: int) -> tuple[dt.date | None, list, str]:
    conn = connect(path, read_only=True)
    try:
        try:
            built = rows(conn, "SELECT min(partition_date), max(partition_date), count(DISTINCT partition_date), "
                               "bool_or(partition_date = $d) FROM serving.recommendations", {"d": day})[0]
        except duckdb.CatalogException:  # a warehouse the serving step never wrote to
            built = (None, None, 0, False)
        if built[1] is None:
            return day, [], "no partition of serving.recommendations was built yet: materialize recommendations"
        if day is not None and not built[3]:
            return day, [], (f"the partition {day} was never built ({built[2]} partitions from {built[0]} to "
                             f"{built[1]}): materialize recommendations for it")
        day = day or built[1]
        found = rows(conn, QUERY.format(source="serving.recommendations r LEFT JOIN raw.items i USING (item_id)"),
                     {"d": day, "u": user, "n": limit})
        last = rows(conn, "SELECT max(ts) FROM raw.events WHERE user_id = $u AND ts < $d + INTERVAL 1 DAY",
                    {"u": user, "d": day})[0][0] if day else None
    finally:
        conn.close()
    why = (f"their last event before then was {last:%Y-%m-%d}, but the partition has no row for them" if last
           else "they have no event up to then")
    return day, found, why


def _from_published(path: str, user: str, day: dt.date | None, limit: int) -> tuple[dt.date | None, list, str]:
    files = sorted(published_dir(Path(path)).glob("*.parquet"))
    chosen = [f for f in files if day is None or f.stem == day.isoformat()]
    if not chosen:
        raise LookupError(f"no published partition{f' for {day}' if day else ''} in {published_dir(Path(path))}")
    conn = duckdb.connect()
    found = rows(conn, QUERY.format(source="read_parquet($file)"),
                 {"file": str(chosen[-1]), "d": dt.date.fromisoformat(chosen[-1].stem), "u": user, "n": limit})
    return dt.date.fromisoformat(chosen[-1].stem), found, "the published partition has no row for them"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True)
    parser.add_argument("--date", type=dt.date.fromisoformat, help="partition date (default: the newest)")
    parser.add_argument("--limit", type=_positive, default=20)
    parser.add_argument("--warehouse", default=str(settings.duckdb_path()))
    args = parser.parse_args(argv)
    if not Path(args.warehouse).is_file():
        print(f"no warehouse at {args.warehouse}: run the pipeline first (make run), or pass --warehouse or set "
              f"{settings.DUCKDB_PATH_ENV}", file=sys.stderr)
        return 1
    try:
        day, found, why = _from_warehouse(args.warehouse, args.user, args.date, args.limit)
    except duckdb.IOException as error:
        if "lock" not in str(error).lower():   # a zero-byte or foreign file, say: one line, no traceback
            print(f"cannot read {args.warehouse} as a DuckDB warehouse: {str(error).removeprefix('IO Error: ')}",
                  file=sys.stderr)
            return 1
        print(f"{args.warehouse} is being written by another process (a Dagster run); reading the published "
              "snapshot instead", file=sys.stderr)
        try:
            day, found, why = _from_published(args.warehouse, args.user, args.date, args.limit)
        except LookupError as missing:
            print(f"{missing}; try again when the run has finished", file=sys.stderr)
            return 1
    if not found:
        print(f"no recommendations for user {args.user!r} on {day} in {args.warehouse}: {why}", file=sys.stderr)
        return 1
    print(f"user {args.user}, recommendations for {day} (model {found[0][5]}):")
    for rank, item, title, score, reason, _ in found:
        print(f"{rank:>3}. {item:<10} {title[:40]:<40} {score:8.3f}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
