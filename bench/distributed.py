"""Training in one process against two data-parallel workers (torchrun, gloo on CPU) on the
embedded sample: pretraining, then fine-tuning (the model and its BPR-MF reference) with the same
world size. Wall time of each, and the validation Recall@20 the fine-tuned model reaches (seed
noise for scale: two seeds).

    .venv/bin/python bench/distributed.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

from measure import load_whole_dataset  # bench/measure.py, beside this script

from unirec_dagster.datasets import load_spec
from unirec_dagster.graph import build_partition
from unirec_dagster.model.checkpoint import CheckpointStore
from unirec_dagster.model.config import FinetuneConfig, PretrainConfig
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.settings import DEFAULT_DATASET
from unirec_dagster.training.distributed import finetune_in_workers, pretrain_in_workers
from unirec_dagster.training.fit import train_variant
from unirec_dagster.training.steps import run_finetuning, run_pretraining
from unirec_dagster.warehouse import connect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-date", default="2011-01-01")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    spec = load_spec(DEFAULT_DATASET)
    run_date = dt.date.fromisoformat(args.run_date)
    with tempfile.TemporaryDirectory() as scratch:
        conn = connect(Path(scratch) / "sample.duckdb")
        load_whole_dataset(conn, spec)
        build_partition(conn, spec, run_date)
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for world_size in (1, 2):
                store = CheckpointStore(Path(scratch) / f"models-{seed}-{world_size}")
                run = partial(subprocess.run, check=True)
                started = time.perf_counter()
                run_pretraining(conn, spec, run_date, PretrainConfig(seed=seed, world_size=world_size), store,
                                pretrainer=pretrain if world_size == 1 else partial(pretrain_in_workers, run=run))
                pretraining = time.perf_counter() - started
                started = time.perf_counter()
                fitted = run_finetuning(conn, spec, run_date, FinetuneConfig(seed=seed, world_size=world_size), store,
                                        trainer=train_variant if world_size == 1 else partial(finetune_in_workers,
                                                                                              run=run))
                finetuning = time.perf_counter() - started
                m = fitted.checkpoint.manifest
                rows.append((seed, m["world_size"], pretraining, finetuning, m["best_epoch"],
                             m["validation"]["model_recall@20"], m["validation"]["recall@20"]))
                print(rows[-1], flush=True)
    print("\n| seed | processes | pretraining wall s | fine-tuning wall s (model + BPR-MF) | best epoch "
          "| validation Recall@20, model | blended |")
    print("|---|---|---|---|---|---|---|")
    for seed, world_size, pretraining, finetuning, epoch, model, blended in rows:
        print(f"| {seed} | {world_size} | {pretraining:.1f} | {finetuning:.1f} | {epoch} | {model:.4f} | {blended:.4f} |")


if __name__ == "__main__":
    main()
