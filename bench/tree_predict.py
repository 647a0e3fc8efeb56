"""Benchmark: the ranker's trees, LightGBM's own `Booster.predict` beside the lleaves-compiled
`CompiledTrees` the nightly serving uses, in one run on the same rows.

A LambdaRank booster shaped like the served ranker (7 leaves, 41 float32 features) is trained on
synthetic candidates for the rounds Online Retail's nights chose (76-229), then both predict the
same rows with all cores. Rows per second, and what that alone allows at 408 candidates per user
(Online Retail's mean at 2011-11-24).

    .venv/bin/python bench/tree_predict.py
"""

from __future__ import annotations

import argparse
import time

import lightgbm as lgb
import numpy as np

from unirec_dagster.ranking.ranker import CompiledTrees, RankerConfig

CANDIDATES_PER_USER = 408


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows predicted by each")
    parser.add_argument("--rounds", default="76,150,229")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200_000, 41)).astype(np.float32)
    labels = (train[:, 0] + train[:, 1] * train[:, 2] + rng.normal(size=len(train)) > 2).astype(float)
    params = {**RankerConfig().params(), "num_threads": 0}
    rows = rng.normal(size=(args.rows, 41)).astype(np.float32)
    print("| rounds | LightGBM rows/s | compiled rows/s | speed-up | compile s | max abs difference | "
          "users/s at 408 candidates (trees alone, compiled) |\n|---|---|---|---|---|---|---|")
    for rounds in (int(r) for r in args.rounds.split(",")):
        booster = lgb.train(params, lgb.Dataset(train, labels, group=np.full(len(train) // 400, 400)),
                            num_boost_round=rounds)
        started = time.perf_counter()
        reference = booster.predict(rows)
        lightgbm_s = time.perf_counter() - started
        started = time.perf_counter()
        compiled = CompiledTrees(booster)
        compile_s = time.perf_counter() - started
        started = time.perf_counter()
        scores = compiled.predict(rows)
        compiled_s = time.perf_counter() - started
        print(f"| {booster.num_trees()} | {args.rows / lightgbm_s:,.0f} | {args.rows / compiled_s:,.0f} | "
              f"{lightgbm_s / compiled_s:.1f}x | {compile_s:.1f} | {np.abs(scores - reference).max():.1e} | "
              f"{args.rows / compiled_s / CANDIDATES_PER_USER:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
