"""Synthetic event logs in the Online Retail raw format, at any scale, for benchmarks and tests.

Shape: items in categories and brands with Zipf popularity inside each category, users with one
to three taste categories, baskets (invoices) of a few lines, titles made of brand, adjective and
category words, events spread over days. Everything is vectorised with NumPy.

    python -m unirec_dagster.synthetic --events 100000 --out /tmp/synth
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

ADJECTIVES = np.array("red blue green vintage classic mini large small retro floral striped wooden glass silver golden "
                      "rustic modern pastel bright soft".split())
NOUNS = np.array("mug candle lantern bag card frame clock cushion bowl plate tin box garland sign heart bottle "
                 "notebook ribbon doormat basket".split())
COUNTRIES = np.array(["United Kingdom", "Germany", "France", "Spain", "Netherlands", "Norway", "Australia"])
CHUNK_EVENTS = 10_000_000  # lines generated at a time


@dataclass
class SyntheticLog:
    events: pa.Table  # InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country, Category, Brand
    start: dt.date
    days: int


def generate(n_events: int, n_days: int = 60, n_users: int | None = None, n_items: int | None = None,
             n_categories: int = 40, n_brands: int = 150, start: dt.date = dt.date(2024, 1, 1), seed: int = 0) -> SyntheticLog:
    rng = np.random.default_rng(seed)
    n_users = n_users or max(50, n_events // 25)
    n_items = n_items or max(40, min(50_000, n_events // 50))

    item_category = np.sort(rng.integers(0, n_categories, n_items))
    item_brand = rng.integers(0, n_brands, n_items)
    category_price = rng.lognormal(1.0, 0.6, n_categories)
    item_price = np.round(category_price[item_category] * rng.lognormal(0.0, 0.3, n_items), 2)
    # Zipf popularity within each category; cumulative weights per category segment are mapped onto
    # [c, c + 1) so one searchsorted picks an item of category c.
    rank = np.arange(n_items) - np.searchsorted(item_category, item_category)
    weight = 1.0 / (rank + 1.0) ** 1.1
    segment_total = np.bincount(item_category, weights=weight, minlength=n_categories)
    cumulative = np.cumsum(weight) - np.concatenate([[0], np.cumsum(segment_total)[:-1]])[item_category]
    position = item_category + cumulative / segment_total[item_category]

    tastes = rng.integers(0, n_categories, (n_users, 3))
    taste_count = rng.integers(1, 4, n_users)
    user_country = rng.choice(len(COUNTRIES), n_users, p=[0.8, 0.05, 0.05, 0.03, 0.03, 0.02, 0.02])
    activity = 1.0 / (np.arange(n_users) + 10.0) ** 0.8
    activity /= activity.sum()

    basket_size = np.minimum(rng.geometric(0.25, n_events // 2 + 10), 40)  # mean ~4: enough lines
    basket_size = basket_size[: np.searchsorted(np.cumsum(basket_size), n_events) + 1]
    n_baskets = len(basket_size)
    basket_user = rng.choice(n_users, n_baskets, p=activity)
    basket_day = rng.integers(0, n_days, n_baskets)
    basket_second = rng.integers(8 * 3600, 20 * 3600, n_baskets)
    title = np.char.add(np.char.add(np.char.add(np.char.add("BRAND", item_brand.astype(str)), " "),
                                    np.char.add(ADJECTIVES[np.arange(n_items) % len(ADJECTIVES)], " ")),
                        NOUNS[item_category % len(NOUNS)])
    title = np.char.upper(title)
    line_basket = np.repeat(np.arange(n_baskets), basket_size)[:n_events]
    cancelled = None
    chunks = []
    # Lines are made in chunks: NumPy's fixed-width strings of 50M lines at once took over 24 GiB.
    for first in range(0, n_events, CHUNK_EVENTS):
        basket = line_basket[first:first + CHUNK_EVENTS]
        lines = len(basket)
        user = basket_user[basket]
        # Mostly the user's tastes, sometimes anything.
        taste_pick = (rng.random(lines) * taste_count[user]).astype(int)
        category = np.where(rng.random(lines) < 0.85, tastes[user, taste_pick], rng.integers(0, n_categories, lines))
        item = np.minimum(np.searchsorted(position, category + rng.random(lines)), n_items - 1)
        if cancelled is None:  # drawn here, as before chunking: logs of one chunk are unchanged
            cancelled = rng.random(n_baskets) < 0.02
        invoice = np.char.add(np.where(cancelled[basket], "C", ""), (500000 + basket).astype(str))
        quantity = rng.integers(1, 13, lines) * np.where(cancelled[basket], -1, 1)
        seconds = basket_day[basket].astype("timedelta64[D]") + basket_second[basket].astype("timedelta64[s]")
        when = np.datetime64(start.isoformat(), "s") + seconds
        chunks.append(pa.table({
            "InvoiceNo": invoice,
            "StockCode": np.char.add("S", item.astype(str)),
            "Description": title[item],
            "Quantity": quantity,
            "InvoiceDate": pc.strftime(pa.array(when, pa.timestamp("s")), "%Y-%m-%d %H:%M:%S"),
            "UnitPrice": item_price[item],
            "CustomerID": np.char.add(user.astype(str), ".0"),
            "Country": COUNTRIES[user_country[user]],
            "Category": np.char.add("category-", category.astype(str)),
            "Brand": np.char.add("BRAND", item_brand[item].astype(str)),
        }))
    table = pa.concat_tables(chunks)
    return SyntheticLog(table, start, n_days)


def write_dataset(log: SyntheticLog, out: Path, layout: str = "csv-days") -> Path:
    """Write the log and a dataset spec out/synthetic.yaml for it; returns the spec's path.

    layout "csv-days": one CSV per day under out/by-day (the Online Retail layout);
    "parquet": one file out/events.parquet, read as a glob layout (fast for large logs).
    """
    out = Path(out)
    if layout == "parquet":
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(log.events, out / "events.parquet")
        path = "events.parquet"
    elif layout == "csv-days":
        (out / "by-day").mkdir(parents=True, exist_ok=True)
        day = pc.cast(pc.strptime(log.events["InvoiceDate"], "%Y-%m-%d %H:%M:%S", "s"), pa.date32())
        for offset in range(log.days):
            date = log.start + dt.timedelta(days=offset)
            rows = log.events.filter(pc.equal(day, pa.scalar(date, pa.date32())))
            if rows.num_rows:
                pacsv.write_csv(rows, out / "by-day" / f"{date.isoformat()}.csv")
        path = "by-day/{date}.csv"
    else:
        raise ValueError(f"layout must be 'csv-days' or 'parquet', not {layout!r}")
    spec_path = out / "synthetic.yaml"
    retail = yaml.safe_load((Path(__file__).resolve().parent.parent / "data" / "datasets" / "online-retail.yaml").read_text())
    retail["name"] = "synthetic"
    retail["description"] = "Synthetic log in the Online Retail format (unirec_dagster.synthetic)."
    if layout == "parquet":
        retail["events"] = {k: v for k, v in retail["events"].items() if k not in ("delimiter", "header")}
        retail["events"]["format"] = "parquet"
    retail["events"].update(path=path, start_date=log.start.isoformat(),
                            end_date=(log.start + dt.timedelta(days=log.days - 1)).isoformat())
    retail["items"]["attributes"] = {"category": "Category", "brand": "Brand"}
    retail["max_reject_rate"] = 0.3  # repeated basket lines are quarantined as duplicates: up to ~10% on small logs
    spec_path.write_text(yaml.safe_dump(retail, sort_keys=False))
    return spec_path


GENRES = np.array("drama comedy thriller romance horror documentary animation western musical crime fantasy "
                  "mystery war sport history biography family adventure".split())


def write_ratings_dataset(out: Path, n_users: int = 1500, n_items: int = 3000, n_days: int = 180,
                          start: dt.date = dt.date(2024, 1, 1), seed: int = 0) -> Path:
    """A log of another shape than the shop's, for checking that a choice does not only suit one
    shop: star ratings (a rating of 4 or 5 is the positive behaviour), short histories (about 12
    ratings a user over a few weeks), a long catalog with a separate item file (titles, pipe-separated
    genres, no prices), epoch-second timestamps in one CSV, and planted structure: each user likes one
    or two genres and rates items of them high and others low, item appeal is log-normal, and a
    tenth of the catalog is released during the log (rated only after its release). Returns the spec."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    genres = rng.integers(0, len(GENRES), (n_items, 2))
    appeal = rng.lognormal(0.0, 1.2, n_items)
    release = np.where(rng.random(n_items) < 0.1, rng.integers(0, n_days, n_items), 0)
    liked = rng.integers(0, len(GENRES), (n_users, 2))
    liked[:, 1] = np.where(rng.random(n_users) < 0.5, liked[:, 0], liked[:, 1])
    lines = np.minimum(rng.geometric(1 / 12, n_users), 200)
    first = rng.integers(0, n_days, n_users)
    span = rng.integers(7, 60, n_users)
    user = np.repeat(np.arange(n_users), lines)
    day = np.minimum(first[user] + rng.integers(0, span[user] + 1), n_days - 1)
    in_taste = rng.random(len(user)) < 0.7
    # items of a liked genre (70%) or any item, by appeal, among those released by that day
    taste_genre = liked[user, rng.integers(0, 2, len(user))]
    chosen = np.empty(len(user), dtype=np.int64)
    for g in range(len(GENRES)):
        of_genre = np.nonzero((genres == g).any(1))[0]
        rows = np.nonzero(in_taste & (taste_genre == g))[0]
        if len(of_genre) and len(rows):
            chosen[rows] = rng.choice(of_genre, len(rows), p=appeal[of_genre] / appeal[of_genre].sum())
    rest = np.nonzero(~in_taste)[0]
    chosen[rest] = rng.choice(n_items, len(rest), p=appeal / appeal.sum())
    day = np.maximum(day, release[chosen])                      # nobody rates an item before its release
    matches = (genres[chosen][:, :, None] == liked[user][:, None, :]).any((1, 2))
    rating = np.clip(np.where(matches, rng.integers(4, 6, len(user)), rng.integers(1, 4, len(user)))
                     + (rng.random(len(user)) < 0.1) * rng.choice([-1, 1], len(user)), 1, 5)
    seconds = (np.datetime64(start.isoformat(), "s") - np.datetime64("1970-01-01", "s")).astype(int) \
        + day * 86400 + rng.integers(0, 86400, len(user))
    keep = np.unique(np.stack([user, chosen]), axis=1, return_index=True)[1]  # one rating per (user, item)
    pacsv.write_csv(pa.table({"userId": user[keep], "movieId": chosen[keep], "rating": rating[keep],
                              "timestamp": seconds[keep]}), out / "ratings.csv")
    titles = np.char.add(np.char.add(ADJECTIVES[np.arange(n_items) % len(ADJECTIVES)], " "),
                         np.char.add(GENRES[genres[:, 0]], np.char.add(" story ", np.arange(n_items).astype(str))))
    pacsv.write_csv(pa.table({"movieId": np.arange(n_items), "title": np.char.title(titles),
                              "genres": np.char.add(np.char.add(GENRES[genres[:, 0]], "|"), GENRES[genres[:, 1]])}),
                    out / "movies.csv")
    spec = {"name": "synthetic-ratings", "description": "Synthetic star ratings (unirec_dagster.synthetic).",
            "events": {"path": "ratings.csv", "format": "csv", "start_date": start.isoformat(),
                       "end_date": (start + dt.timedelta(days=n_days - 1)).isoformat(),
                       "user_id": "userId", "item_id": "movieId", "value": "rating",
                       "timestamp": {"column": "timestamp", "unit": "s"},
                       "event_type": {"rules": [{"column": "rating", "less_than": 4, "value": "disliked"}],
                                      "default": "liked"},
                       "positive_event_type": "liked"},
            "items": {"file": {"path": "movies.csv"}, "id": "movieId", "title": "title",
                      "attributes": {"genre": {"column": "genres", "delimiter": "|"}}}}
    spec_path = out / "ratings.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["csv-days", "parquet"], default="csv-days")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ratings", action="store_true", help="a ratings log of another shape "
                        "(write_ratings_dataset) instead of the shop's")
    args = parser.parse_args()
    if args.ratings:
        print(f"wrote a synthetic ratings log; spec: {write_ratings_dataset(args.out, seed=args.seed)}")
        return
    spec = write_dataset(generate(args.events, n_days=args.days, seed=args.seed), args.out, args.layout)
    print(f"wrote {args.events:,} events over {args.days} days; spec: {spec}")


if __name__ == "__main__":
    main()
