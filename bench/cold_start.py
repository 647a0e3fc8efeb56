"""EVALUATION.md's strict item cold start on a warehouse that holds a whole dataset (Online Retail by
default): 10% of the candidate items lose their training events in a scratch copy, the pipeline's
own steps train and serve there, and the hidden items' test pairs are scored for the served table (the
two-stage ranker, which learned where new items go from the items first sold in its validation
window), the same ranker with new items never shown, the logit blend with a new item forced into
every 10th slot (the previous policy), the pretrained and from-scratch models in process, and the
content and attribute-popularity baselines on the same split.

A test pair is an item new to the user in the real data: a user who bought a hidden item before the
cutoff and buys it again is not one (EVALUATION.md). `--protocol launches` lists the items first
sold inside the test window in the catalog before the cutoff instead (title and price as the
catalog has them), changes nothing else, and scores the launches' pairs.

    .venv/bin/python bench/cold_start.py --warehouse data/retail.duckdb [--protocol launches]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import torch

from unirec_dagster.datasets import load_spec
from unirec_dagster.evaluation.cold_start import (
    attribute_popularity_scores,
    choose_hidden_items,
    content_scores,
    earlier_buyers,
    hidden_item_metrics,
    hidden_pairs,
    hide_items,
    launched_items,
    new_to_the_user,
    rank_with,
)
from unirec_dagster.evaluation.evaluate import rank, subset_metrics
from unirec_dagster.evaluation.served import served_ranking
from unirec_dagster.evaluation.split import load_holdout
from unirec_dagster.features import text_view
from unirec_dagster.graph import build_partition
from unirec_dagster.model.checkpoint import FROM_SCRATCH, CheckpointStore
from unirec_dagster.model.config import FinetuneConfig, PretrainConfig
from unirec_dagster.ranking.two_stage import TwoStage
from unirec_dagster.serving.policy import served_policy
from unirec_dagster.serving.recommend import ServingSettings, write_recommendations
from unirec_dagster.settings import PROJECT_ROOT
from unirec_dagster.training.ranking import RankingSettings
from unirec_dagster.training.steps import run_finetuning, run_pretraining
from unirec_dagster.warehouse import connect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", default=str(PROJECT_ROOT / "data" / "retail.duckdb"))
    parser.add_argument("--spec", default=str(PROJECT_ROOT / "data" / "datasets" / "online-retail.yaml"))
    parser.add_argument("--run-date", default="2011-11-24", help="cutoff = the next day")
    parser.add_argument("--window-days", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="which items are hidden")
    parser.add_argument("--protocol", choices=["strict", "launches"], default="strict",
                        help="strict: a seeded 10%% of the items lose their history; launches: the items first "
                             "sold in the test window are listed in the catalog before the cutoff")
    parser.add_argument("--simulated-new-items", type=float, default=RankingSettings().simulated_new_items,
                        help="RankingSettings.simulated_new_items: item dropout in the ranker's examples and a "
                             "new-item placement model (0: off)")
    parser.add_argument("--exclude-unsold", action="store_true",
                        help="RankingSettings.exclude_unsold: catalog items unsold by the cutoff left out of the "
                             "ranker's examples (off by default, as the pipeline runs)")
    parser.add_argument("--ranking", default="{}", help="more RankingSettings as JSON, e.g. "
                        "'{\"simulated_repeat_buyers\": true}'")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    run_date = dt.date.fromisoformat(args.run_date)
    cutoff = run_date + dt.timedelta(days=1)
    started = time.perf_counter()
    source = connect(args.warehouse, read_only=True)
    window_end = cutoff + dt.timedelta(days=args.window_days)
    positive = spec.events.positive_event_type
    hidden = (choose_hidden_items(source, cutoff, seed=args.seed) if args.protocol == "strict"
              else launched_items(source, cutoff, window_end, positive))
    earlier = earlier_buyers(source, cutoff, hidden, positive)
    source.close()
    with tempfile.TemporaryDirectory() as scratch:
        conn = hide_items(Path(args.warehouse), Path(scratch) / "hidden.duckdb", cutoff, hidden)
        build_partition(conn, spec, run_date)
        store = CheckpointStore(Path(scratch) / "models")
        run_pretraining(conn, spec, run_date, PretrainConfig(epochs=args.pretrain_epochs), store, log=print)
        fitted = run_finetuning(conn, spec, run_date, FinetuneConfig(), store, from_scratch=True, log=print,
                                ranking=RankingSettings(simulated_new_items=args.simulated_new_items,
                                                        exclude_unsold=args.exclude_unsold,
                                                        **json.loads(args.ranking)))
        text = text_view(conn)
        policy = served_policy(conn, spec, fitted.checkpoint, run_date, text)
        scratch = served_policy(conn, spec, fitted.ablations[FROM_SCRATCH], run_date, text)
        signals = policy.blend.signals
        holdout = new_to_the_user(conn, signals.data, load_holdout(conn, spec, signals.data, window_end), earlier)
        keep = hidden_pairs(conn, signals.data, holdout, hidden)

        def served(ranking, settings: ServingSettings = ServingSettings()):
            """What the serving step writes for `ranking` under `settings`, read back as a reader does."""
            write_recommendations(conn, spec, run_date, ranking, "bench", None, settings, policy.graph)
            return served_ranking(conn, run_date, holdout.users, signals.data)[0]

        def model_only(blend):
            return rank(type(blend)(signals, {"model": 1.0}, blend.embeddings), holdout.users)

        rankings = {f"served table: {policy.name}": served(policy.ranking)}
        if isinstance(policy.ranking, TwoStage):
            new = torch.nonzero(~signals.data.interacted).flatten()
            stage = policy.ranking
            rankings["the same ranker, new items never shown"] = served(
                TwoStage(stage.inputs, stage.config, stage.ranker, torch.cat([stage.never, new])))
            if stage.placement is not None:
                rankings["the same ranker without the new-item placement model"] = served(
                    TwoStage(stage.inputs, stage.config, stage.ranker, stage.never))
            rankings["the same ranker, a new item in every 10th slot (the operator's override)"] = served(
                policy.ranking, ServingSettings(new_item_every=10))
        rankings |= {
            "logit blend, a new item in every 10th slot (the previous policy)": served(
                policy.blend, ServingSettings(new_item_every=10)),
            "from scratch: its logit blend, a new item in every 10th slot": served(
                scratch.blend, ServingSettings(new_item_every=10)),
            "pretrained + fine-tuned graph model only": model_only(policy.blend),
            "from-scratch graph model only": model_only(scratch.blend),
            "content (text cosine to the user's past items)": rank_with(content_scores(signals, text), signals,
                                                                        holdout.users),
            "attribute popularity among the user's past items": rank_with(
                attribute_popularity_scores(signals, policy.graph), signals, holdout.users),
        }
        everyone = torch.ones(len(holdout.pair_items), dtype=torch.bool)
        results = {name: (hidden_item_metrics(top, holdout, keep, signals.data.num_items),
                          subset_metrics("all", top, holdout, everyone, signals.data.num_items))
                   for name, top in rankings.items()}
    what = "hidden items of the candidates" if args.protocol == "strict" else "launches listed in the catalog"
    print(f"\n{len(hidden)} {what} at {cutoff}; test window {args.window_days} days; pairs new to the user in "
          f"the real data ({len(earlier)} earlier purchases of those items do not count)\n")
    some = next(iter(results.values()))
    print(f"| method | hidden items' test pairs: Recall@20 / NDCG@20 ({some[0].users} users, {some[0].pairs} pairs) | "
          f"all test pairs: Recall@20 / NDCG@20 ({some[1].users} users) |\n|---|---|---|")
    unsold = torch.cat([~signals.data.interacted, torch.tensor([False])])   # the last entry: -1, no row
    for name, top in rankings.items():
        print(f"{name}: {float(unsold[top[:, :20]].float().mean()):.1%} of the top 20 are unsold items")
    for name, (cold, everything) in results.items():
        print(f"| {name} | {cold.metrics.get('recall@20', 0):.4f} / {cold.metrics.get('ndcg@20', 0):.4f} | "
              f"{everything.metrics.get('recall@20', 0):.4f} / {everything.metrics.get('ndcg@20', 0):.4f} |")
    print(json.dumps({name: [r.metrics for r in pair] for name, pair in results.items()}))
    print(f"wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
