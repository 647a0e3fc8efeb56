"""How results look in the Dagster UI: every markdown table and picture of the asset metadata, in
one place. Pictures are PNGs drawn with matplotlib and embedded in markdown as data URIs (what
Dagster's docs suggest for images in metadata), so they need no file server."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence

import dagster as dg

from unirec_dagster.evaluation.steps import MetricRow
from unirec_dagster.training.gate import GateResult


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> dg.MetadataValue:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(header: tuple[str, str], counts: dict[str, int]) -> dg.MetadataValue:
    return markdown_table(header, counts.items())


def history_table(history: list[dict]) -> dg.MetadataValue:
    """One line per epoch: the losses (and the validation metric) of a training run."""
    epochs = [row for row in history if "epoch" in row]
    keys = [k for k in epochs[0] if k != "epoch"] if epochs else []
    return markdown_table(["epoch", *keys], ([row["epoch"], *(float(row.get(k, 0.0)) for k in keys)] for row in epochs))


def gate_table(gate: GateResult) -> dg.MetadataValue:
    """The quality gate's comparison: each simple baseline's validation figures and the paired
    bootstrap interval of the ranker's Recall@20 minus its own."""
    def interval(name: str) -> str:
        if name not in gate.intervals:
            return "no ranker"
        low, high = gate.intervals[name]
        return f"{low:+.4f}..{high:+.4f}" + (" (beaten)" if low > 0 else "")
    rows = [(name, m["recall@20"], m["ndcg@20"], interval(name) + (" - serves" if name == gate.policy else ""))
            for name, m in sorted(gate.baselines.items(), key=lambda kv: -kv[1]["recall@20"])]
    if gate.ranker is not None:
        rows.insert(0, ("two-stage ranker (out of fold)", gate.ranker["recall@20"], gate.ranker["ndcg@20"],
                        "serves" if gate.passed else ""))
    return markdown_table(["policy", "validation Recall@20", "NDCG@20", "ranker minus it, 90% interval"], rows)


def importance_table(importances: dict[str, float], top: int = 15) -> dg.MetadataValue:
    """The ranker's most useful features, by their share of the total split gain."""
    return markdown_table(["feature", "share of gain"], list(importances.items())[:top])


def curves_image(history: list[dict], title: str) -> dg.MetadataValue:
    """Each loss of a training run per epoch (left axis), and the validation metric when there is one
    (right axis), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to a buffer
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row for row in history if "epoch" in row]
    figure, losses = plt.subplots(figsize=(6, 3.6), dpi=100)
    try:
        x = [row["epoch"] for row in epochs]
        for key in (k for k in (epochs[0] if epochs else {}) if k not in ("epoch", "validation")):
            losses.plot(x, [float(row.get(key, "nan")) for row in epochs], marker=".", label=key)
        losses.set_xlabel("epoch")
        losses.set_ylabel("loss")
        losses.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = losses.get_legend_handles_labels()
        if any("validation" in row for row in epochs):
            metric = losses.twinx()
            metric.plot(x, [float(row.get("validation", "nan")) for row in epochs], color="black", linestyle="--", marker="o",
                        label="validation Recall@20")
            metric.set_ylabel("validation Recall@20")
            more = metric.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        # one legend under the plot, so it never hides a curve
        losses.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=max(len(handles), 1),
                      fontsize=8, frameon=False)
        losses.set_title(title, fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})")


COMPARISON = [("recall", 20), ("ndcg", 20), ("hitrate", 20), ("mrr", None), ("coverage", 20)]


def comparison_table(metrics: list[MetricRow], split: str = "test", slice_: str = "all") -> dg.MetadataValue:
    """One line per model, best Recall@20 first: Recall/NDCG/HitRate@20, MRR, coverage@20, users."""
    table: dict[str, dict[tuple[str, int | None], float]] = {}
    users: dict[str, int] = {}
    for m in metrics:
        if m.split == split and m.slice == slice_:
            table.setdefault(m.model, {})[(m.metric, m.k)] = m.value
            users[m.model] = m.users
    ordered = sorted(table.items(), key=lambda kv: -kv[1].get(("recall", 20), 0.0))
    return markdown_table(["model", "Recall@20", "NDCG@20", "HitRate@20", "MRR", "coverage@20", "users"],
                          ([model, *(values.get(c, "") for c in COMPARISON), users[model]] for model, values in ordered))
