"""Recommendation quality on a dataset's warehouse (Online Retail by default), on EVALUATION.md's
protocol: the served table of each partition beside the classic peers tuned on the same validation
window (EASE^R, RP3beta, EASE^R + recent popularity), the logit blend, the graph model alone and
the simple baselines, per slice, for several seeds; the ranker's candidate recall and feature
importances; and ablations of the ranker's inputs.

Uses a warehouse that already holds the whole dataset (bench/ingest_year.py, or the raw_events
backfill and the catalogs), then runs the pipeline's own steps for each partition: text embeddings,
the partition's KG snapshots, pretraining, fine-tuning (graph model, tuned peers, ranker, gate),
the served table, the evaluation. Ablations refit the ranker on the same night's validation window
(without the graph model's candidates and scores; with the from-scratch model's instead of the
pretrained one's; without the text view's features; without KG attribute overlap) and score it in
process on the same test window.

    .venv/bin/python bench/retail_quality.py --run-dates 2011-11-10:14,2011-11-24:15 --seeds 0,1,2 --ablation-seeds 0
    .venv/bin/python bench/retail_quality.py --run-dates 2011-11-24:15 --ablation-seeds 0 --ablations window
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

from measure import load_whole_dataset  # bench/measure.py, beside this script

from unirec_dagster.datasets import load_spec
from unirec_dagster.evaluation.split import load_holdout
from unirec_dagster.evaluation.steps import SERVED, baseline_label, evaluate_policy, run_evaluation
from unirec_dagster.features import text_view
from unirec_dagster.graph import build_partition
from unirec_dagster.history import never_recommended
from unirec_dagster.model.checkpoint import FINETUNED, FROM_SCRATCH, CheckpointStore
from unirec_dagster.model.config import FinetuneConfig, PretrainConfig
from unirec_dagster.ranking.baselines import simple_baselines
from unirec_dagster.ranking.classic import EASE_RECENT, ClassicParams, TunedClassic
from unirec_dagster.ranking.inputs import cutoff_inputs
from unirec_dagster.ranking.ranker import RankerConfig
from unirec_dagster.ranking.two_stage import TwoStage
from unirec_dagster.serving.policy import served_policy
from unirec_dagster.serving.recommend import ServingSettings, write_recommendations
from unirec_dagster.settings import PROJECT_ROOT
from unirec_dagster.training.ranking import RankingSettings
from unirec_dagster.training.steps import fit_ranking, run_finetuning, run_pretraining
from unirec_dagster.warehouse import connect

SLICES = ("all", "cold_users", "warm_users", "new_items", "tail_items")
PEER = f"{EASE_RECENT} (tuned)"
ABLATIONS = {
    "ranker without the graph model (no model candidates or scores)": ({"use_model": False}, FINETUNED),
    "ranker over the from-scratch model (no pretraining)": ({}, FROM_SCRATCH),
    "ranker without the text view's features": ({"text": False}, FINETUNED),
    "ranker without KG attribute overlap": ({"use_attributes": False}, FINETUNED),
    "ranker from 1 validation window": ({"windows": 1}, FINETUNED),
    "ranker from 3 validation windows": ({"windows": 3}, FINETUNED),
    "ranker refitted as served": ({}, FINETUNED),
    "ranker without the simulated copy (it trains the new-item placement only)":
        ({"simulated_trains_ranker": False}, FINETUNED),
    "ranker whose simulated copy counts repeat buyers (before)": ({"simulated_repeat_buyers": True}, FINETUNED),
    # half of every list but the new items': half the candidates a user, what serving pays for (issue 31)
    "ranker over half the candidates": ({"candidates": {"model": 100, "ease": 100, "rp3beta": 75, "co_purchase": 50,
                                                        "trending": 50, "new_items": 20}}, FINETUNED),
}


def ablation_metrics(conn, spec, result, run_date: dt.date, holdout, change: dict, model: str, seed: int) -> dict:
    """Refit the ranker of the night with one input changed; score it (with its new-item placement) in
    process on the test window."""
    change = dict(change)
    text = text_view(conn) if change.pop("text", True) else None
    settings = RankingSettings(ranker=RankerConfig(seed=seed), **change)
    fitted = result.fitted[model]
    started = time.perf_counter()
    two_stage, _ = fit_ranking(conn, spec, result.validation, fitted, text, result.classic, settings, log=print)
    seconds = time.perf_counter() - started
    final = fitted.train
    inputs = cutoff_inputs(conn, spec, final.signals, final.graph if settings.use_attributes else None,
                           fitted.embeddings if settings.use_model else None, text, result.classic.params)
    stage = TwoStage(inputs, settings.candidates, two_stage.fit.ranker, never_recommended(conn, spec, final.data.items),
                     two_stage.placement)
    return {**{r.slice: r.metrics for r in evaluate_policy(stage, holdout)},
            "validation": two_stage.validation, "fit_seconds": round(seconds, 1)}


def one_seed(conn, spec, run_date: dt.date, seed: int, window_days: int, pretrain_epochs: int,
             ablations: dict) -> dict:
    with tempfile.TemporaryDirectory() as models:
        store = CheckpointStore(Path(models))
        started = time.perf_counter()
        run_pretraining(conn, spec, run_date, PretrainConfig(epochs=pretrain_epochs, seed=seed), store, log=print)
        pretrain_s = time.perf_counter() - started
        started = time.perf_counter()
        ranking = RankingSettings(ranker=RankerConfig(seed=seed))
        result = run_finetuning(conn, spec, run_date, FinetuneConfig(seed=seed), store,
                                from_scratch=any(model == FROM_SCRATCH for _, model in ablations.values()),
                                log=print, ranking=ranking)
        finetune_s = time.perf_counter() - started
        policy = served_policy(conn, spec, result.checkpoint, run_date)
        stats = write_recommendations(conn, spec, run_date, policy.ranking, result.checkpoint.version, None,
                                      ServingSettings(), policy.graph)
        evaluation = run_evaluation(conn, spec, run_date, store, window_days, log=print)
        extra = {}
        if ablations:
            holdout = load_holdout(conn, spec, result.fitted[FINETUNED].train.data,
                                   run_date + dt.timedelta(days=1 + window_days))
            for label, (change, model) in ablations.items():
                extra[label] = ablation_metrics(conn, spec, result, run_date, holdout, change, model, seed)
                print(f"{label}: {extra[label]['all']}", flush=True)
    m = result.checkpoint.manifest
    ranking_about = m["ranking"] or {}
    return {
        "seed": seed, "pretrain_s": round(pretrain_s, 1), "finetune_s": round(finetune_s, 1),
        "serve_s": round(stats.seconds, 1), "policy": m["policy"], "gate": m["gate"]["reason"],
        # model names without the checkpoint version, so that seeds line up
        "metrics": {f"{short(r.model)}|{r.slice}|{r.metric}@{r.k}": (r.value, r.users) for r in evaluation.rows
                    if r.split == "test" and r.metric in ("recall", "ndcg") and r.k == 20},
        "validation": {f"{r.model}|{r.metric}@{r.k}": r.value for r in evaluation.rows if r.split == "validation"},
        "candidate_recall": ranking_about.get("candidate_recall"), "rounds": ranking_about.get("rounds"),
        "importances": ranking_about.get("importances"), "ablations": extra,
        "ranker_validation": ranking_about.get("validation") or {"recall@20": 0.0},
        "unserved": evaluation.unserved_users, "users": evaluation.test_users,
    }


def short(model: str) -> str:
    return model.split(": ", 1)[1] if model.startswith("finetuned-") else model


def report(run_date: str, runs: list[dict]) -> None:
    mean = statistics.mean
    for slice_ in SLICES:
        print(f"\n{run_date}, slice {slice_} (test, mean over seeds):")
        print("| model | Recall@20 | NDCG@20 | users |\n|---|---|---|---|")
        models = sorted({key.split("|")[0] for r in runs for key in r["metrics"]})
        lines = []
        for model in models:
            recall = [r["metrics"].get(f"{model}|{slice_}|recall@20") for r in runs]
            ndcg = [r["metrics"].get(f"{model}|{slice_}|ndcg@20") for r in runs]
            if all(recall) and all(ndcg):
                lines.append((mean(v for v, _ in recall), mean(v for v, _ in ndcg), model, recall[0][1]))
        for recall, ndcg, model, users in sorted(lines, reverse=True):
            print(f"| {model} | {recall:.4f} | {ndcg:.4f} | {users} |")
    served = [(r["metrics"][f"{SERVED}|all|recall@20"][0], r["metrics"][f"{SERVED}|all|ndcg@20"][0]) for r in runs]
    peer = [(r["metrics"][f"{PEER}|all|recall@20"][0], r["metrics"][f"{PEER}|all|ndcg@20"][0]) for r in runs]
    print(f"\n{run_date}: served / tuned EASE^R + recent popularity, per seed: "
          + ", ".join(f"{s[0] / p[0]:.3f} / {s[1] / p[1]:.3f}" for s, p in zip(served, peer))
          + f"; mean of seeds: Recall@20 {mean(s[0] for s in served):.4f} vs {mean(p[0] for p in peer):.4f} "
          f"({mean(s[0] for s in served) / mean(p[0] for p in peer):.3f}x), NDCG@20 {mean(s[1] for s in served):.4f}"
          f" vs {mean(p[1] for p in peer):.4f} ({mean(s[1] for s in served) / mean(p[1] for p in peer):.3f}x)")
    # The strongest simple baseline on the test window itself (an oracle pick, stricter than the gate's)
    simple = [baseline_label(name) for name in simple_baselines(TunedClassic(ClassicParams(), 0.0, {}), True)]
    test_best = [max((r["metrics"][f"{name}|all|recall@20"][0], name) for name in simple
                     if f"{name}|all|recall@20" in r["metrics"]) for r in runs]
    print(f"{run_date}: served / the strongest simple baseline on the test window, per seed: "
          + ", ".join(f"{s[0] / b[0]:.3f} ({b[1]} {b[0]:.4f})" for s, b in zip(served, test_best)))
    ablated = [r for r in runs if r["ablations"]]
    if ablated:
        seeds = ",".join(str(r["seed"]) for r in ablated)
        print(f"\n{run_date} ablations (in process, all users, seeds {seeds}; the full ranker served the same "
              "night):\n| ranker | validation Recall@20 (out of fold) | fit s | test Recall@20 | NDCG@20 |\n"
              "|---|---|---|---|---|")
        print(f"| full (served table) | {mean(r['ranker_validation']['recall@20'] for r in ablated):.4f} | | "
              f"{mean(r['metrics'][f'{SERVED}|all|recall@20'][0] for r in ablated):.4f} | "
              f"{mean(r['metrics'][f'{SERVED}|all|ndcg@20'][0] for r in ablated):.4f} |")
        for label in ablated[0]["ablations"]:
            rows_ = [r["ablations"][label] for r in ablated]
            print(f"| {label} | {mean(a['validation']['recall@20'] for a in rows_):.4f} | "
                  f"{mean(a['fit_seconds'] for a in rows_):.0f} | {mean(a['all']['recall@20'] for a in rows_):.4f} | "
                  f"{mean(a['all']['ndcg@20'] for a in rows_):.4f} |")
    for r in runs:
        print(f"seed {r['seed']}: policy {r['policy']} ({r['gate']}); {r['rounds']} rounds; candidate recall "
              f"{r['candidate_recall']}; pretrain {r['pretrain_s']}s, fine-tune + ranker {r['finetune_s']}s, "
              f"serving {r['serve_s']}s")
    top = runs[0]["importances"] or {}
    print(f"importances (seed {runs[0]['seed']}): " + ", ".join(f"{k} {v:.3f}" for k, v in list(top.items())[:12]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", default=str(PROJECT_ROOT / "data" / "retail.duckdb"))
    parser.add_argument("--spec", default=str(PROJECT_ROOT / "data" / "datasets" / "online-retail.yaml"))
    # EVALUATION.md's reference figures at 2011-11-24 (735 users) run the window to the end of the
    # data, 2011-12-09 inclusive: 15 days after the 2011-11-25 cutoff. 14 would drop the last day.
    parser.add_argument("--run-dates", default="2011-11-24:15",
                        help="partitions with their test window in days: DATE:DAYS,...; cutoff = the next day")
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="pretrained_encoder's default")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--ablation-seeds", default="", help="seeds whose night also refits the ranker without "
                        "each input, e.g. 0")
    parser.add_argument("--ablations", default="", help="only the ablations whose label holds one of these "
                        "comma-separated words, e.g. windows")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    conn = connect(args.warehouse)
    started = time.perf_counter()
    load_whole_dataset(conn, spec)
    results = {}
    for item in args.run_dates.split(","):
        day, _, window = item.partition(":")
        run_date = dt.date.fromisoformat(day)
        build_partition(conn, spec, run_date)
        ablation_seeds = {int(s) for s in args.ablation_seeds.split(",") if s}
        chosen = {label: a for label, a in ABLATIONS.items()
                  if not args.ablations or any(word in label for word in args.ablations.split(","))}
        results[day] = [one_seed(conn, spec, run_date, int(s), int(window or 14), args.pretrain_epochs,
                                 chosen if int(s) in ablation_seeds else {}) for s in args.seeds.split(",")]
        print(json.dumps({day: results[day]}), flush=True)
    for day, runs in results.items():
        report(day, runs)
    print(f"\nwall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
