"""Show a user's latest recommendations with titles and reasons.

    python -m unirec_dagster.show --user 12347 [--date 2011-11-24] [--limit 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from unirec_dagster import settings
from unirec_dagster.warehouse import connect, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True)
    parser.add_argument("--date", type=dt.date.fromisoformat, help="partition date (default: the newest)")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--warehouse", default=str(settings.duckdb_path()))
    args = parser.parse_args(argv)
    conn = connect(args.warehouse, read_only=True)
    day = args.date or rows(conn, "SELECT max(partition_date) FROM serving.recommendations")[0][0]
    found = rows(conn, """
        SELECT r.rank, r.item_id, coalesce(i.title, ''), r.score, r.reason, r.model_version
        FROM serving.recommendations r LEFT JOIN raw.items i USING (item_id)
        WHERE r.partition_date = $d AND r.user_id = $u ORDER BY r.rank LIMIT $n""",
                 {"d": day, "u": args.user, "n": args.limit})
    if not found:
        last = rows(conn, "SELECT max(ts) FROM raw.events WHERE user_id = $u AND ts < $d + INTERVAL 1 DAY",
                    {"u": args.user, "d": day})[0][0] if day else None
        why = (f"their last event before then was {last:%Y-%m-%d}, outside the look-back window" if last
               else "they have no event up to then")
        print(f"no recommendations for user {args.user!r} on {day} in {args.warehouse}: {why}", file=sys.stderr)
        return 1
    print(f"user {args.user}, recommendations for {day} (model {found[0][5]}):")
    for rank, item, title, score, reason, _ in found:
        print(f"{rank:>3}. {item:<10} {title[:40]:<40} {score:8.3f}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
