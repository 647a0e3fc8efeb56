"""Benchmark: build a KG snapshot from N synthetic events (default 10 million).

Generates the log (unirec_dagster.synthetic), ingests it through the real ingestion path (Parquet,
glob layout, streamed in batches) in a fresh process, then builds the KG snapshot of the last day
in another, and reports each one's wall time and peak RSS. Baselines, in the same run: a bare
DuckDB read of the Parquet file into a table, and the bare interaction aggregation (one GROUP BY over the
events: what any KG build must at least do).

    .venv/bin/python bench/kg_build.py --events 10000000
    .venv/bin/python bench/kg_build.py --events 10000000 --keep /tmp/k10   # keep the warehouse
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from measure import in_fresh_process, peak_rss_gib  # bench/measure.py, beside this script

from unirec_dagster.datasets import load_spec
from unirec_dagster.graph import build_snapshot
from unirec_dagster.ingest import ingest_days
from unirec_dagster.synthetic import generate, write_dataset
from unirec_dagster.warehouse import connect, rows


def build_only(db: str, spec_path: str, day: str) -> None:
    """Run in a child process so that its peak RSS is the build's alone."""
    conn = connect(db)
    started = time.perf_counter()
    stats = build_snapshot(conn, load_spec(spec_path), dt.date.fromisoformat(day))
    wall = time.perf_counter() - started
    started = time.perf_counter()
    rows(conn, "SELECT count(*) FROM (SELECT user_id, event_type, item_id, count(*), max(ts) FROM raw.events GROUP BY ALL)")
    baseline = time.perf_counter() - started
    peak = peak_rss_gib()
    print(json.dumps({"wall": wall, "baseline": baseline, "peak_gib": peak, "triples": stats.triples,
                      "entities": sum(stats.entities_by_type.values()), "by_relation": stats.triples_by_relation}))


def ingest_only(db: str, spec_path: str) -> None:
    """Run in a child process so that its peak RSS is the ingestion's alone."""
    spec = load_spec(spec_path)
    span = (spec.events.end_date - spec.events.start_date).days
    days = [spec.events.start_date + dt.timedelta(days=i) for i in range(span + 1)]
    conn = connect(db)
    started = time.perf_counter()
    ingest_days(conn, spec, days)
    wall = time.perf_counter() - started
    events, rejected = rows(conn, "SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM raw.rejected_events)")[0]
    print(json.dumps({"wall": wall, "peak_gib": peak_rss_gib(), "events": events, "rejected": rejected}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--build-only", nargs=3, metavar=("DB", "SPEC", "DAY"))
    parser.add_argument("--ingest-only", nargs=2, metavar=("DB", "SPEC"))
    parser.add_argument("--keep", metavar="DIR", help="Write the data and warehouse here and keep them "
                                                     "(e.g. for bench/pretrain_throughput.py).")
    args = parser.parse_args()
    if args.build_only:
        build_only(*args.build_only)
        return
    if args.ingest_only:
        ingest_only(*args.ingest_only)
        return
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        started = time.perf_counter()
        log = generate(args.events, n_days=args.days)
        spec_path = write_dataset(log, Path(tmp) / "synthetic", layout="parquet")
        del log
        generated = time.perf_counter() - started
        spec = load_spec(spec_path)
        days = [spec.events.start_date + dt.timedelta(days=i) for i in range(args.days)]
        db = str(Path(tmp) / "bench.duckdb")
        ingested = in_fresh_process(__file__, "--ingest-only", db, str(spec_path))
        if ingested is None:
            sys.exit(1)
        started = time.perf_counter()
        files = [str(f) for f in spec.events_files()]
        bare_conn = duckdb.connect()  # a real read of every column, not the row count from the footer
        bare_conn.execute("CREATE TABLE bare AS SELECT * FROM read_parquet(?)", [files])
        read = bare_conn.execute("SELECT count(*) FROM bare").fetchall()[0][0]
        bare_conn.close()
        bare = time.perf_counter() - started
        result = in_fresh_process(__file__, "--build-only", db, str(spec_path), days[-1].isoformat())
        if result is None:
            sys.exit(1)
    print(f"generated {args.events:,} events in {generated:.1f}s")
    print("| step | wall s | peak RSS GiB |")
    print("|---|---|---|")
    print(f"| ingestion, glob layout streamed ({ingested['events']:,} accepted + {ingested['rejected']:,} rejected "
          f"of {read:,} rows) | {ingested['wall']:.1f} | {ingested['peak_gib']:.2f} |")
    print(f"| baseline: bare DuckDB read of the same Parquet file into an in-memory table | {bare:.1f} | – |")
    print(f"| KG snapshot build ({result['entities']:,} entities, {result['triples']:,} triples) | {result['wall']:.1f} | "
          f"{result['peak_gib']:.2f} |")
    print(f"| baseline: bare user-item GROUP BY over raw.events | {result['baseline']:.1f} | (same process) |")
    print("triples by relation:", result["by_relation"])


if __name__ == "__main__":
    main()
