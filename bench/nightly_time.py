"""Wall time of the weekly and the nightly runs through the real CLI, on a copy of a warehouse that
holds the whole dataset (the raw_events backfill and the catalogs), as an operator runs them:

    weekly:  dagster asset materialize --select knowledge_graph --partition S (the Saturday ending the
             last week before D), then --select pretrained_encoder --partition W (that week's Sunday)
    nightly: dagster asset materialize --select knowledge_graph,item_text_embeddings,
             finetuned_recommender,recommendations,similar_items --partition D
             (the nightly job's assets; the raw ones are in the copy already)
    delayed: dagster asset materialize --select model_evaluation --partition D, as the
             delayed_evaluation sensor runs it once D's test window is ingested (a run of its own)

    .venv/bin/python bench/nightly_time.py --warehouse data/retail.duckdb --run-date 2011-11-24
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unirec_dagster.datasets import last_complete_week

ROOT = Path(__file__).resolve().parent.parent
NIGHTLY = "knowledge_graph,item_text_embeddings,finetuned_recommender,recommendations,similar_items"


def runs(run_date: str) -> list[tuple[str, str, str]]:
    """(name, selection, partition) of the weekly run (the graph of the week's Saturday, then the
    week's pretraining), of the nightly run, and of the night's delayed evaluation."""
    week = last_complete_week(dt.date.fromisoformat(run_date))
    saturday = (dt.date.fromisoformat(week) + dt.timedelta(days=6)).isoformat()
    return [(f"weekly: knowledge_graph {saturday}", "knowledge_graph", saturday),
            (f"weekly: pretrained_encoder {week}", "pretrained_encoder", week),
            (f"nightly ({NIGHTLY.replace(',', ', ')}) {run_date}", NIGHTLY, run_date),
            (f"delayed evaluation: model_evaluation {run_date}", "model_evaluation", run_date)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", default=str(ROOT / "data" / "retail.duckdb"))
    parser.add_argument("--spec", default=str(ROOT / "data" / "datasets" / "online-retail.yaml"))
    parser.add_argument("--run-date", default="2011-11-24")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        warehouse = home / "warehouse.duckdb"
        shutil.copy(args.warehouse, warehouse)  # the runs write: never into the caller's warehouse
        (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        env = {**os.environ, "UNIREC_DATASET": args.spec, "UNIREC_DUCKDB_PATH": str(warehouse),
               "UNIREC_MODELS_DIR": str(home / "models"), "DAGSTER_HOME": str(home)}
        print("| run | wall s (CLI start-up included) | steps |\n|---|---|---|")
        for name, selection, partition in runs(args.run_date):
            command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                       "unirec_dagster.definitions", "--select", selection, "--partition", partition]
            started = time.perf_counter()
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode:
                sys.exit(f"{name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            steps = re.findall(r'Finished execution of step "(\w+)" in ((?:\d+m)?[\d.]+m?s)', done.stdout + done.stderr)
            print(f"| {name} | {wall:.1f} | {', '.join(f'{s} {t}' for s, t in steps)} |")


if __name__ == "__main__":
    main()
