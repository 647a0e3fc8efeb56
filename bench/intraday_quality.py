"""What intraday freshness is worth: for the users who buy again inside a served night's test window,
the list the read API serves after their first purchase of the window (that basket posted to
/events) against the night's list as published, scored on what they bought afterwards.

    .venv/bin/python bench/intraday_quality.py --warehouse W.duckdb --night 2011-11-10 [--days 14]

The night must be published (`recommendations` writes `<warehouse>.serving/recommendations/<night>.parquet`
and its co-purchase neighbours) and the warehouse must hold the window's events. For each user with
purchases at two or more moments of the window: the first moment's items are the basket posted;
the targets are the items bought later in the window that the user never bought before (the
protocol's new-to-the-user pairs) and that were not in that basket. Recall@20 = hits in the top 20
over the number of targets (EVALUATION.md), every such user counted; both lists come from the same
code (`unirec_dagster.api.read_night`, `Night.after_purchases`), a 90% paired bootstrap interval
over users for the difference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unirec_dagster.api import read_night  # noqa: E402
from unirec_dagster.datasets import load_spec  # noqa: E402
from unirec_dagster.evaluation.metrics import paired_bootstrap  # noqa: E402
from unirec_dagster.serving.recommend import published_dir  # noqa: E402
from unirec_dagster.settings import dataset_spec_path  # noqa: E402
from unirec_dagster.warehouse import connect, rows  # noqa: E402

K = 20


def recall(listed: list[str], targets: set[str]) -> float:
    return len(set(listed[:K]) & targets) / len(targets)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--night", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--spec", default=str(dataset_spec_path()))
    parser.add_argument("--events", help="read the events from this warehouse instead (a copy with the same "
                                         "raw.events, when a run holds the serving one)")
    args = parser.parse_args()
    night = read_night(published_dir(Path(args.warehouse)) / f"{args.night.isoformat()}.parquet")
    if not night.co_purchased:
        sys.exit("the night was published without co-purchase neighbours: re-materialize its recommendations")
    cutoff = night.cutoff
    positive = load_spec(Path(args.spec)).events.positive_event_type
    conn = connect(Path(args.events or args.warehouse), read_only=True)
    window = rows(conn, """SELECT user_id, item_id, ts FROM raw.events
                           WHERE event_type = $p AND ts >= $c AND ts < $e ORDER BY user_id, ts""",
                  {"p": positive, "c": cutoff, "e": cutoff + dt.timedelta(days=args.days)})
    before = {(u, i) for u, i in rows(conn, "SELECT DISTINCT user_id, item_id FROM raw.events "
                                            "WHERE event_type = $p AND ts < $c", {"p": positive, "c": cutoff})}
    conn.close()
    by_user: dict[str, list[tuple[dt.datetime, str]]] = {}
    for user, item, ts in window:
        by_user.setdefault(str(user), []).append((ts, str(item)))
    nightly, fresh, users, unknown = [], [], 0, 0
    for user, events in by_user.items():
        first = events[0][0]
        basket = list(dict.fromkeys(item for ts, item in events if ts == first))
        targets = {item for ts, item in events if ts > first and item not in basket and (user, item) not in before}
        if not targets:
            continue
        users += 1
        listed = night.lists.get(user)
        if listed is None:
            unknown += 1
            listed = night.most_recommended
        nightly.append(recall([item for item, _ in listed], targets))
        fresh.append(recall([item for item, _ in night.after_purchases(listed, basket)], targets))
    a, b = torch.tensor(fresh), torch.tensor(nightly)
    low, high = paired_bootstrap(a, b)
    print(f"night {night.night}, window {args.days} days: {users} users bought at two or more moments with a "
          f"new item later ({unknown} unknown to the night, served its fallback)\n")
    print("| list | Recall@20 on the later purchases |\n|---|---|")
    print(f"| the night's list, as published | {b.mean():.4f} |")
    print(f"| after the first purchase of the window posted to /events | {a.mean():.4f} |")
    print(f"\nratio {a.mean() / b.mean():.3f}x; difference {a.mean() - b.mean():+.4f}, 90% paired bootstrap "
          f"interval {low:+.4f}..{high:+.4f}")


if __name__ == "__main__":
    main()
