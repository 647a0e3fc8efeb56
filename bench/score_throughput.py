"""Benchmark: nightly batch scoring throughput (users/second) and peak memory.

Each case runs in its own process, so its peak RSS (VmHWM) is its own. On random embeddings and a
random purchase history (about 20 items per user), it times:

- `model`: the serving path's blocked top-K (`serving.topk.top_k`) on the model's dot product,
  with the user's purchases excluded: what scoring costs.
- `blend`: the whole served score (`serving.recommend.score_users`): model, co-purchase,
  recent and all-time popularity, standardised, weighted, reasons, exclusions.
- `two-stage`: the served two-stage ranker (`serving.recommend.rank_two_stage`): candidates from
  the model, EASE^R, RP3beta, co-purchase, trending and new items, their features (with a 384-d
  text view and synthetic history statistics), the LightGBM ranker (fitted beforehand on 2,000
  users, not timed), reasons. Run on the 4,000-item case only, to keep the bench short.
- `two-stage, N shards`: the same, the users split over N forked worker processes of one thread
  each (`serving.shards`, `ServingSettings.shards`); peak RSS is the parent's, and the largest
  shard's is given beside it (the shards share the parent's pages until they write them).
- `trees`: the same ranker's compiled trees alone, on the served path's own features of the first
  10,000 users (built before the clock starts): the bound the rest of the two-stage path is judged by.
- `baseline`: the naive way, one full users x items score matrix and one `torch.topk` over it,
  with the same exclusions. It needs users x items x 4 bytes at once, so on 100k x 50k it runs on
  the share of users that fits in `--baseline-gib` and its rate is reported for that share.

    .venv/bin/python bench/score_throughput.py
    .venv/bin/python bench/score_throughput.py --shards 1,2,4,8   # shard scaling, on a machine with the cores
    .venv/bin/python bench/score_throughput.py --cases 200000x4000 --candidates '{"model": 100, "ease": 100}'
        # the two-stage and trees rows again over shorter candidate lists
    .venv/bin/python bench/score_throughput.py --device cuda   # when a GPU is lent
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import time

import numpy as np
import torch
from measure import in_fresh_process, peak_rss_gib  # bench/measure.py, beside this script

from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.history import CutoffStats, TrainingData
from unirec_dagster.ranking.candidates import CandidateConfig, CutoffInputs
from unirec_dagster.ranking.content import ItemContent
from unirec_dagster.ranking.ranker import RankerConfig
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.topk import block_rows, top_k
from unirec_dagster.ranking.two_stage import TwoStage
from unirec_dagster.serving.reasons import Explainer
from unirec_dagster.serving.recommend import rank_two_stage, score_users
from unirec_dagster.serving.shards import rank_in_shards
from unirec_dagster.training.ranking import fit_two_stage

CASES = [(200_000, 4_000), (100_000, 50_000)]  # (users, items)
TREES_USERS = 10_000  # users whose features the trees-alone row scores (their float64 features held at once)


def synthetic(users: int, items: int, dim: int, per_user: int, seed: int = 0):
    """Entity ids: users 0..U-1, items U..U+I-1. Purchases skewed towards popular items."""
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(users + items, dim, generator=g) / dim ** 0.5
    torch.manual_seed(seed)  # Pareto.sample draws from the global generator: the same catalog every run
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


def synthetic_inputs(data: TrainingData, embeddings: torch.Tensor, seed: int = 0) -> CutoffInputs:
    """History statistics drawn at random (their values do not change the cost), a 384-d text view."""
    g = torch.Generator().manual_seed(seed)
    items, users = data.num_items, int(data.train_users.max()) + 1
    r = lambda n, scale=1.0: torch.rand(n, generator=g) * scale  # noqa: E731
    stats = CutoffStats(
        data.cutoff, {"buyers_all": data.popularity, "buyers_7": r(items, 5).round(), "buyers_30": r(items, 20).round(),
                      "buyers_90": r(items, 60).round(), "adopters": r(items, 10).round(), "age_days": r(items, 365),
                      "since_sale_days": r(items, 30), "price": r(items, 20) + 0.5, "buyers_year_ago": r(items, 20)},
        torch.arange(users), {"last_days": r(users, 90), "first_days": r(users, 365) + 90, "positives": r(users, 40),
                              "baskets": r(users, 10), "distinct_items": r(users, 30), "price": r(users, 10) + 0.5},
        torch.randint(0, 30, (users,), generator=g), r((31, items)), [f"country {i}" for i in range(30)])
    content = ItemContent(data.items, data.items, torch.randn(items, 384, generator=g))
    return CutoffInputs(Signals(data), stats, content, embeddings)


def fitted_two_stage(inputs: CutoffInputs, seed: int = 0, config: CandidateConfig = CandidateConfig()) -> TwoStage:
    """A ranker fitted on 2,000 users whose window purchases are drawn by popularity, over `config`'s lists."""
    g = torch.Generator().manual_seed(seed)
    data = inputs.signals.data
    users = torch.arange(2_000)
    pair_users = users.repeat_interleave(3)
    pair_items = torch.multinomial(data.popularity + 1, len(pair_users), replacement=True, generator=g)
    holdout = HoldoutPairs(users, pair_users, pair_items, torch.full((len(users),), 3),
                           torch.zeros(len(pair_users), dtype=torch.bool))
    fit = fit_two_stage(inputs, holdout, config, RankerConfig(max_rounds=100, patience=100))
    return TwoStage(inputs, config, fit.fit.ranker)


def run_case(method: str, users: int, items: int, k: int, dim: int, device: str, baseline_gib: float,
             shards: int = 1, candidates: CandidateConfig = CandidateConfig()) -> dict:
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
    scored, extra = users, {}
    started = time.perf_counter()
    if method == "model":
        top_k(lambda r: embeddings[r] @ item_vectors.T, users, k, exclude_rows, exclude_items,
              chunk=block_rows(items))
    elif method == "two-stage":
        stage = fitted_two_stage(synthetic_inputs(data, embeddings), config=candidates)
        sync()
        started = time.perf_counter()
        explainer = Explainer(stage.inputs.signals, embeddings)
        rank_in_shards(lambda part: rank_two_stage(stage, part, k, explainer), user_ids, shards)
        if shards > 1:  # Linux reports kilobytes: the largest shard's peak
            extra = {"largest_shard_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)}
    elif method == "trees":  # the ranker's compiled trees alone, on the served path's own features
        stage = fitted_two_stage(synthetic_inputs(data, embeddings), config=candidates)
        scored = min(users, TREES_USERS)
        features = np.concatenate([e.features.numpy() for e in stage.examples(user_ids[:scored], torch.float64)])
        stage.ranker.predict(features[:1000])   # compiled before the clock starts
        started = time.perf_counter()
        stage.ranker.predict(features)
        extra = {"candidates_per_user": round(len(features) / scored), "rounds": stage.ranker.rounds}
    elif method == "blend":
        scorer = Scorer(signals, {"model": 0.4, "co_purchase": 0.3, "recent_popularity": 0.2, "popularity": 0.1},
                        embeddings)
        score_users(scorer, user_ids, k, True, Explainer(scorer.signals, scorer.embeddings))
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
            "setup_peak_rss_gib": round(setup_peak, 2), "peak_rss_gib": round(peak_rss_gib(), 2), **extra}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline-gib", type=float, default=4.0, help="Memory the naive full matrix may take.")
    parser.add_argument("--cases", default=",".join(f"{u}x{i}" for u, i in CASES),
                        help="USERSxITEMS,...: which cases to run (default: all)")
    parser.add_argument("--shards", default="1,2", help="N,...: shard counts the two-stage row runs with (default: 1,2)")
    parser.add_argument("--candidates", default="",
                        help='JSON of candidate list sizes (CandidateConfig), e.g. \'{"model": 100}\': the two-stage '
                             'and trees rows are run again over these lists, beside the default ones')
    parser.add_argument("--only", nargs=3, metavar=("METHOD", "USERS", "ITEMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        method, users, items = args.only[0], int(args.only[1]), int(args.only[2])
        print(json.dumps(run_case(method, users, items, args.k, args.dim, args.device, args.baseline_gib,
                                  int(args.shards), CandidateConfig(**json.loads(args.candidates or "{}")))))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, K={args.k}, dim={args.dim}")
    print("| users | items | method | users scored | seconds | users/s | peak RSS GiB (after setup) |")
    print("|---|---|---|---|---|---|---|")
    for users, items in [tuple(int(n) for n in case.split("x")) for case in args.cases.split(",")]:
        runs = [(m, 1, "") for m in ("model", "blend")] + \
            [("two-stage", int(n), "") for n in args.shards.split(",")] + [("trees", 1, "")]
        if args.candidates:
            runs += [("two-stage", 1, args.candidates), ("trees", 1, args.candidates)]
        for method, shards, lists in runs + [("baseline", 1, "")]:
            if method in ("two-stage", "trees") and items > 4_000:
                continue
            r = in_fresh_process(__file__, "--only", method, str(users), str(items), "--k", str(args.k), "--dim",
                                 str(args.dim), "--device", args.device, "--baseline-gib", str(args.baseline_gib),
                                 "--shards", str(shards), *(["--candidates", lists] if lists else []))
            if method == "two-stage" and shards > 1:
                method = f"two-stage, {shards} shards"
            if r is None:
                print(f"| {users:,} | {items:,} | {method} | failed |||||", flush=True)
                continue
            if method == "trees":
                method = f"trees alone ({r['rounds']} rounds, {r['candidates_per_user']} candidates a user)"
            if lists:
                method += f", lists {lists}"
            shard_rss = f"; largest shard {r['largest_shard_rss_gib']}" if "largest_shard_rss_gib" in r else ""
            print(f"| {users:,} | {items:,} | {method} | {r['scored_users']:,} | {r['seconds']} | {r['users_per_s']:,} | "
                  f"{r['peak_rss_gib']} ({r['setup_peak_rss_gib']}){shard_rss} |", flush=True)


if __name__ == "__main__":
    main()
