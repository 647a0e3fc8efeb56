"""Benchmark: pretraining throughput (interaction edges/second) and peak memory on a large KG.

Takes a warehouse that already holds ingested events (e.g. the 10M-event synthetic one that
`bench/kg_build.py --keep DIR` leaves behind), builds what pretraining needs when missing (the
item and user catalogs, the KG snapshot of `--day`, the item text embeddings), then pretrains in
a fresh process per method so that each peak RSS (VmHWM) is its own:

- `unirec`: the product's pretraining, all four objectives (sampled-softmax links, DistMult
  triples, masked attribute, text-graph InfoNCE) over a 2-layer propagation of the whole KG at
  every step.
- `unirec-sampled`: the same objectives with sampled-subgraph steps (`--fanouts`, batch
  `--sampled-batch-size`): each step embeds only what its losses read, from sampled neighbourhoods.
- `baseline`: the same trainer as plain BPR matrix factorisation: no graph, no text, the link
  objective only, as BPR (one sampled negative per edge). What the interaction edges alone cost.

    .venv/bin/python bench/kg_build.py --events 10000000 --keep /tmp/k10
    .venv/bin/python bench/pretrain_throughput.py --warehouse /tmp/k10/bench.duckdb \\
        --spec /tmp/k10/synthetic/synthetic.yaml --epochs 1 --batch-size 262144
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

from measure import in_fresh_process, peak_rss_gib  # bench/measure.py, beside this script

from unirec_dagster.datasets import load_spec
from unirec_dagster.features import refresh_text_embeddings, text_view
from unirec_dagster.graph import build_snapshot, load_graph
from unirec_dagster.ingest import build_catalog
from unirec_dagster.model.config import EncoderConfig, PretrainConfig
from unirec_dagster.model.device import choose_device
from unirec_dagster.model.pretrain import interaction_relations, pretrain, pretraining_batch_size
from unirec_dagster.model.text_encoder import TextEncoder
from unirec_dagster.warehouse import connect, rows


def prepare(db: str, spec_path: str, day: dt.date) -> dict:
    """Catalogs, KG snapshot and text embeddings, each only when missing."""
    spec = load_spec(spec_path)
    conn = connect(db)
    timings = {}
    started = time.perf_counter()
    if not rows(conn, "SELECT count(*) FROM raw.items")[0][0]:
        build_catalog(conn, spec, "items")
        build_catalog(conn, spec, "users")
    timings["catalogs_s"] = time.perf_counter() - started
    started = time.perf_counter()
    if not rows(conn, "SELECT count(*) FROM kg.snapshots WHERE snapshot_date = $d", {"d": day})[0][0]:
        build_snapshot(conn, spec, day)
    graph = load_graph(conn, day)
    timings["kg_s"] = time.perf_counter() - started
    started = time.perf_counter()
    stats = refresh_text_embeddings(conn, TextEncoder(None, choose_device("auto")), log=print)
    timings["text_s"] = time.perf_counter() - started
    conn.close()
    return {**timings, "entities": graph.num_entities, "triples": sum(e.shape[1] for e in graph.edge_index.values()),
            "texts_encoded": stats.encoded, "items_with_text": stats.items}


def run(method: str, db: str, spec_path: str, day: dt.date, epochs: int, batch_size: int, device: str,
        fanouts: list[int] | None = None) -> dict:
    spec = load_spec(spec_path)
    conn = connect(db, read_only=True)
    graph = load_graph(conn, day)
    full = method.startswith("unirec")
    text = text_view(conn) if full else None
    conn.close()
    config = PretrainConfig(epochs=epochs, batch_size=batch_size, device=device,
                            fanouts=fanouts if method == "unirec-sampled" else None)
    if not full:
        config = config.model_copy(update={"encoder": EncoderConfig(layers=0, use_graph=False, use_text=False),
                                           "kg_weight": 0.0, "mask_weight": 0.0, "align_weight": 0.0,
                                           "link_loss": "bpr"})
    positive = spec.events.positive_event_type
    edges = sum(graph.edge_index[n].shape[1] for n in interaction_relations(graph, positive))
    result = pretrain(graph, text, config, positive, log=lambda m: print(m, file=sys.stderr, flush=True))
    return {"method": method, "device": result.device, "interaction_edges": edges, "epochs": epochs,
            "batch_size": pretraining_batch_size(edges, config), "seconds": round(result.seconds, 1),
            "edges_per_s": round(result.examples_per_second), "peak_rss_gib": round(peak_rss_gib(), 2),
            "final_losses": {k: round(v, 4) for k, v in result.history[-1].items() if k != "epoch"},
            "parameters": sum(p.numel() for p in result.model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", required=True, help="A DuckDB file with ingested raw.events.")
    parser.add_argument("--spec", required=True, help="The dataset spec the events were ingested with.")
    parser.add_argument("--day", help="KG snapshot date (default: the spec's end date).")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", nargs="+", default=["unirec", "unirec-sampled", "baseline"])
    parser.add_argument("--fanouts", default="10,5", help="Neighbours per entity and layer of unirec-sampled.")
    parser.add_argument("--sampled-batch-size", type=int, default=32768)
    parser.add_argument("--prepare-only", action="store_true", help="Build what is missing, then stop.")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    day = dt.date.fromisoformat(args.day) if args.day else load_spec(args.spec).events.end_date
    fanouts = [int(f) for f in args.fanouts.split(",")]
    if args.only:
        batch = args.sampled_batch_size if args.only == "unirec-sampled" else args.batch_size
        print(json.dumps(run(args.only, args.warehouse, args.spec, day, args.epochs, batch, args.device, fanouts)))
        return
    print("prepared:", json.dumps(prepare(args.warehouse, args.spec, day)), flush=True)
    if args.prepare_only:
        return
    print("| method | device | interaction edges | epochs | batch | seconds | edges/s | peak RSS GiB | final losses |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        r = in_fresh_process(__file__, "--warehouse", args.warehouse, "--spec", args.spec, "--day", day.isoformat(),
                             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device",
                             args.device, "--fanouts", args.fanouts, "--sampled-batch-size",
                             str(args.sampled_batch_size), "--only", method)
        if r is None:
            print(f"| {method} | failed ||||||||", flush=True)
            continue
        name = f"{method} {fanouts}" if method == "unirec-sampled" else method
        print(f"| {name} | {r['device']} | {r['interaction_edges']:,} | {r['epochs']} | {r['batch_size']:,} | "
              f"{r['seconds']} | {r['edges_per_s']:,} | {r['peak_rss_gib']} | {r['final_losses']} |", flush=True)


if __name__ == "__main__":
    main()
