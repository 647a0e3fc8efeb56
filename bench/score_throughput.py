"""Benchmark: nightly batch scoring throughput (users/second) and peak memory.

Each case runs in its own process, so its peak RSS (VmHWM) is its own. On random embeddings and a
random purchase history (about 20 items per user), it times:

- `model`: the serving path's blocked top-K (`serving.topk.top_k`) on the model's dot product,
  with the user's purchases excluded: what scoring costs.
- `blend`: the whole served score (`serving.recommend.score_users`): model, co-purchase,
  recent and all-time popularity, standardised, weighted, reasons, exclusions.
- `baseline`: the naive way, one full users x items score matrix and one `torch.topk` over it,
  with the same exclusions. It needs users x items x 4 bytes at once, so on 100k x 50k it runs on
  the share of users that fits in `--baseline-gib` and its rate is reported for that share.

    .venv/bin/python bench/score_throughput.py
    .venv/bin/python bench/score_throughput.py --device cuda   # when a GPU is lent
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import torch

from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.history import TrainingData
from unirec_dagster.serving.reasons import Explainer
from unirec_dagster.serving.recommend import score_users
from unirec_dagster.ranking.topk import block_rows, top_k

from measure import in_fresh_process, peak_rss_gib  # bench/measure.py, beside this script

CASES = [(200_000, 4_000), (100_000, 50_000)]  # (users, items)


def synthetic(users: int, items: int, dim: int, per_user: int, seed: int = 0):
    """Entity ids: users 0..U-1, items U..U+I-1. Purchases skewed towards popular items."""
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(users + items, dim, generator=g) / dim ** 0.5
    popularity = torch.distributions.Pareto(1.0, 1.2).sample((items,)).clamp(max=1e4)
    pair_users = torch.arange(users).repeat_interleave(per_user)
    pair_items = torch.multinomial(popularity, len(pair_users), replacement=True, generator=g)
    key = torch.unique(pair_users * items + pair_items)  # distinct pairs, sorted by user
    pair_users, pair_items = key // items, key % items
    counts = torch.bincount(pair_items, minlength=items).float()
    data = TrainingData(dt.date(2024, 1, 1), torch.arange(users, users + items), pair_users, pair_items,
                        torch.rand(len(key), generator=g) * 365, torch.ones(len(key), dtype=torch.long),
                        counts, (counts * torch.rand(items, generator=g)).round(), counts)
    return embeddings, data


def run_case(method: str, users: int, items: int, k: int, dim: int, device: str, baseline_gib: float) -> dict:
    embeddings, data = synthetic(users, items, dim, per_user=20)
    embeddings = embeddings.to(device)
    setup_started = time.perf_counter()
    signals = Signals(data)
    setup = time.perf_counter() - setup_started
    setup_peak = peak_rss_gib()
    user_ids = torch.arange(users)
    item_vectors = embeddings[data.items]
    exclude_rows, exclude_items = signals.exclusions(user_ids)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    scored = users
    started = time.perf_counter()
    if method == "model":
        top_k(lambda r: embeddings[r] @ item_vectors.T, users, k, exclude_rows, exclude_items,
              chunk=block_rows(items))
    elif method == "blend":
        scorer = Scorer(signals, {"model": 0.4, "co_purchase": 0.3, "recent_popularity": 0.2, "popularity": 0.1},
                        embeddings)
        score_users(scorer, user_ids, k, True, Explainer(scorer, None))
    else:  # baseline: one full matrix
        scored = min(users, int(baseline_gib * 2**30 / 4 / items))
        full = embeddings[:scored] @ item_vectors.T
        keep = exclude_rows < scored
        full[exclude_rows[keep].to(device), exclude_items[keep].to(device)] = float("-inf")
        torch.topk(full, k, dim=1)
    sync()
    seconds = time.perf_counter() - started
    return {"method": method, "users": users, "items": items, "scored_users": scored, "k": k, "device": device,
            "seconds": round(seconds, 2), "users_per_s": round(scored / seconds), "signals_setup_s": round(setup, 1),
            "setup_peak_rss_gib": round(setup_peak, 2), "peak_rss_gib": round(peak_rss_gib(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline-gib", type=float, default=4.0, help="Memory the naive full matrix may take.")
    parser.add_argument("--only", nargs=3, metavar=("METHOD", "USERS", "ITEMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        method, users, items = args.only[0], int(args.only[1]), int(args.only[2])
        print(json.dumps(run_case(method, users, items, args.k, args.dim, args.device, args.baseline_gib)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, K={args.k}, dim={args.dim}")
    print("| users | items | method | users scored | seconds | users/s | peak RSS GiB (after setup) |")
    print("|---|---|---|---|---|---|---|")
    for users, items in CASES:
        for method in ("model", "blend", "baseline"):
            r = in_fresh_process(__file__, "--only", method, str(users), str(items), "--k", str(args.k), "--dim",
                                 str(args.dim), "--device", args.device, "--baseline-gib", str(args.baseline_gib))
            if r is None:
                print(f"| {users:,} | {items:,} | {method} | failed |||||", flush=True)
                continue
            print(f"| {users:,} | {items:,} | {method} | {r['scored_users']:,} | {r['seconds']} | {r['users_per_s']:,} | "
                  f"{r['peak_rss_gib']} ({r['setup_peak_rss_gib']}) |", flush=True)


if __name__ == "__main__":
    main()
