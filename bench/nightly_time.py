"""Wall time of the weekly and the nightly runs through the real CLI, on a copy of a warehouse that
holds the whole dataset (the raw_events backfill and the catalogs), as an operator runs them:

    weekly:  dagster asset materialize --select knowledge_graph,pretrained_encoder --partition D
    nightly: dagster asset materialize --select knowledge_graph,item_text_embeddings,
             finetuned_recommender,recommendations,model_evaluation,similar_items --partition D

    .venv/bin/python bench/nightly_time.py --warehouse data/retail.duckdb --run-date 2011-11-24
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "weekly pretraining (knowledge_graph, pretrained_encoder)": "knowledge_graph,pretrained_encoder",
    "nightly (knowledge_graph, item_text_embeddings, finetuned_recommender, recommendations, model_evaluation, "
    "similar_items)": "knowledge_graph,item_text_embeddings,finetuned_recommender,recommendations,model_evaluation,"
                      "similar_items",
}


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
        for name, selection in RUNS.items():
            command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                       "unirec_dagster.definitions", "--select", selection, "--partition", args.run_date]
            started = time.perf_counter()
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode:
                sys.exit(f"{name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            steps = re.findall(r'Finished execution of step "(\w+)" in ((?:\d+m)?[\d.]+m?s)', done.stdout + done.stderr)
            print(f"| {name} | {wall:.1f} | {', '.join(f'{s} {t}' for s, t in steps)} |")


if __name__ == "__main__":
    main()
