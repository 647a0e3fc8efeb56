"""Benchmark: backfill the whole Online Retail year into raw.events in one Dagster run.

Runs the real CLI (`dagster asset materialize --partition-range`) on a fresh warehouse; the same
ingestion called in this process (`ingest_days`, what the asset runs, without the CLI's start-up
and Dagster's bookkeeping); and, as the baseline in the same run, a bare DuckDB read_csv of the
same files (no contract, no quarantine).

    .venv/bin/python bench/ingest_year.py
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from unirec_dagster.datasets import load_spec
from unirec_dagster.ingest import ingest_days
from unirec_dagster.warehouse import connect, rows

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "data" / "datasets" / "online-retail.yaml"


def main() -> None:
    spec = load_spec(SPEC_PATH)
    files = sorted(spec.events_file_for(spec.events.start_date).parent.glob("*.csv"))
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        env = {**os.environ, "UNIREC_DATASET": str(SPEC_PATH), "UNIREC_DUCKDB_PATH": str(db), "DAGSTER_HOME": str(home)}

        def materialize(partitions: list[str], warehouse: Path) -> float:
            command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                       "unirec_dagster.definitions", "--select", "raw_events", *partitions]
            started = time.perf_counter()
            subprocess.run(command, env={**env, "UNIREC_DUCKDB_PATH": str(warehouse)}, check=True,
                           capture_output=True, cwd=ROOT)
            return time.perf_counter() - started

        # The CLI's fixed cost: start-up, loading the definitions, the step's process, one day's work.
        one_day = materialize(["--partition", str(spec.events.start_date)], Path(tmp) / "one_day.duckdb")
        wall = materialize(["--partition-range", f"{spec.events.start_date}...{spec.events.end_date}"], db)
        conn = connect(db, read_only=True)
        events, rejected = rows(conn, "SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM raw.rejected_events)")[0]
        conn.close()

        days = [spec.events.start_date + dt.timedelta(days=d)
                for d in range((spec.events.end_date - spec.events.start_date).days + 1)]
        direct = connect(Path(tmp) / "direct.duckdb")
        started = time.perf_counter()
        ingest_days(direct, spec, days)
        direct_wall = time.perf_counter() - started
        direct.close()

        started = time.perf_counter()
        baseline = duckdb.connect()
        plain = baseline.execute(
            "SELECT count(*) FROM read_csv(?, header = true, all_varchar = true)", [[str(f) for f in files]]
        ).fetchall()[0][0]
        baseline_wall = time.perf_counter() - started

    lines = events + rejected
    print("| method | lines | wall s | lines/s |")
    print("|---|---|---|---|")
    print(f"| unirec raw_events backfill, {len(files)} files, one Dagster run (CLI start-up included) | {lines:,} | "
          f"{wall:.1f} | {lines / wall:,.0f} |")
    print(f"| the CLI's fixed cost: the same command for one day ({spec.events.start_date}) | – | {one_day:.1f} | – |")
    print(f"| unirec ingest_days in process (what the asset runs, no CLI start-up) | {lines:,} | {direct_wall:.1f} | "
          f"{lines / direct_wall:,.0f} |")
    print(f"| baseline: bare DuckDB read_csv, no contract or quarantine | {plain:,} | {baseline_wall:.1f} | "
          f"{plain / baseline_wall:,.0f} |")
    print(f"ratio to the baseline: {wall / baseline_wall:.1f}x with the CLI, {(wall - one_day) / baseline_wall:.1f}x "
          f"with the CLI less its one-day fixed cost, {direct_wall / baseline_wall:.1f}x in process")
    print(f"accepted {events:,} + rejected {rejected:,} = {lines:,} (expected 541,909)")
    if lines != 541_909:
        raise SystemExit("line count does not match the Online Retail year")


if __name__ == "__main__":
    main()
