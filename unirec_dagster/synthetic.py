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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["csv-days", "parquet"], default="csv-days")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = write_dataset(generate(args.events, n_days=args.days, seed=args.seed), args.out, args.layout)
    print(f"wrote {args.events:,} events over {args.days} days; spec: {spec}")


if __name__ == "__main__":
    main()
