"""EVALUATION.md's strict item cold start on a warehouse that holds a whole dataset (Online Retail by
default): 10% of the candidate items lose their training events in a scratch copy, the pipeline's
own steps train and serve there, and the hidden items' test pairs are scored for the served table,
the pretrained and from-scratch models in process, and the content and attribute-popularity
baselines on the same split.

    .venv/bin/python bench/cold_start.py --warehouse data/retail.duckdb
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

from unirec_dagster.datasets import load_spec
from unirec_dagster.evaluation.cold_start import (attribute_popularity_scores, choose_hidden_items, content_scores,
                                                  hidden_item_metrics, hidden_pairs, hide_items, rank_with)
from unirec_dagster.evaluation.evaluate import rank
from unirec_dagster.evaluation.served import served_ranking
from unirec_dagster.evaluation.split import load_holdout
from unirec_dagster.graph import build_partition
from unirec_dagster.model.checkpoint import CheckpointStore
from unirec_dagster.model.config import FinetuneConfig, PretrainConfig
from unirec_dagster.serving.recommend import ServingSettings, write_recommendations
from unirec_dagster.settings import PROJECT_ROOT
from unirec_dagster.training.context import served_model, text_view
from unirec_dagster.training.steps import FROM_SCRATCH, run_finetuning, run_pretraining
from unirec_dagster.warehouse import connect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", default=str(PROJECT_ROOT / "data" / "retail.duckdb"))
    parser.add_argument("--spec", default=str(PROJECT_ROOT / "data" / "datasets" / "online-retail.yaml"))
    parser.add_argument("--run-date", default="2011-11-24", help="cutoff = the next day")
    parser.add_argument("--window-days", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="which items are hidden")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    run_date = dt.date.fromisoformat(args.run_date)
    cutoff = run_date + dt.timedelta(days=1)
    started = time.perf_counter()
    source = connect(args.warehouse, read_only=True)
    hidden = choose_hidden_items(source, cutoff, seed=args.seed)
    source.close()
    with tempfile.TemporaryDirectory() as scratch:
        conn = hide_items(Path(args.warehouse), Path(scratch) / "hidden.duckdb", cutoff, hidden)
        build_partition(conn, spec, run_date)
        store = CheckpointStore(Path(scratch) / "models")
        run_pretraining(conn, spec, run_date, PretrainConfig(epochs=args.pretrain_epochs), store, log=print)
        fitted = run_finetuning(conn, spec, run_date, FinetuneConfig(), store, from_scratch=True, log=print)
        text = text_view(conn)
        served = served_model(conn, spec, fitted.checkpoint, run_date, text)
        write_recommendations(conn, spec, run_date, served.scorer, fitted.checkpoint.version, None,
                              ServingSettings(), served.graph)
        signals = served.scorer.signals
        holdout = load_holdout(conn, spec, signals.data, cutoff + dt.timedelta(days=args.window_days))
        keep = hidden_pairs(conn, signals.data, holdout, hidden)
        scratch_model = served_model(conn, spec, fitted.ablations[FROM_SCRATCH], run_date, text).scorer
        rankings = {
            "served table (pretrained + fine-tuned, blended)": served_ranking(conn, run_date, holdout.users,
                                                                              signals.data)[0],
            "pretrained + fine-tuned, model only": rank(type(served.scorer)(signals, {"model": 1.0},
                                                                            served.scorer.embeddings), holdout.users),
            "from scratch, blended": rank(scratch_model, holdout.users),
            "content (text cosine to the user's past items)": rank_with(content_scores(signals, text), signals,
                                                                        holdout.users),
            "attribute popularity among the user's past items": rank_with(
                attribute_popularity_scores(signals, served.graph), signals, holdout.users),
        }
        results = {name: hidden_item_metrics(top, holdout, keep, signals.data.num_items)
                   for name, top in rankings.items()}
    print(f"\n{len(hidden)} hidden items of the candidates at {cutoff}; test window {args.window_days} days\n")
    print("| method (hidden items' test pairs) | Recall@20 | NDCG@20 | users | pairs |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r.metrics.get('recall@20', 0):.4f} | {r.metrics.get('ndcg@20', 0):.4f} | {r.users} | {r.pairs} |")
    print(json.dumps({name: r.metrics for name, r in results.items()}))
    print(f"wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
