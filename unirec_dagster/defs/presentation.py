"""How results look in the Dagster UI: every markdown table of the asset metadata, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg

from unirec_dagster.training.steps import MetricRow


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


def importance_table(importances: dict[str, float], top: int = 15) -> dg.MetadataValue:
    """The ranker's most useful features, by their share of the total split gain."""
    return markdown_table(["feature", "share of gain"], list(importances.items())[:top])


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
