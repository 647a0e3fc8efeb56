"""Fine-tuning on the target behaviour: BPR on (user, item) positive pairs before the cutoff,
recent pairs weighted up, starting from pretrained weights or from scratch, early-stopped on a
validation metric (or run for a fixed number of epochs, as chosen on validation earlier)."""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import FinetuneConfig
from unirec_dagster.model.encoder import GraphEncoder, Propagation, TextView
from unirec_dagster.model.objectives import bpr_loss
from unirec_dagster.model.pretrain import TrainResult, alignment_loss, start_training
from unirec_dagster.progress import Progress


def recency_weights(last_days: torch.Tensor, half_life_days: float) -> torch.Tensor:
    return torch.pow(0.5, last_days / half_life_days)


def finetune(graph: KnowledgeGraph, text: TextView | None, config: FinetuneConfig, users: torch.Tensor,
             items: torch.Tensor, weights: torch.Tensor, candidate_items: torch.Tensor,
             initial_state: dict[str, torch.Tensor] | None = None,
             validate: Callable[[torch.Tensor], float] | None = None, epochs: int | None = None,
             log: Callable[[str], None] | None = None) -> TrainResult:
    """`users`/`items` are entity ids of the positive pairs, `weights` their loss weights;
    negatives are drawn from `candidate_items`. With `validate` (final embeddings -> metric,
    higher is better) training stops after `patience` epochs without progress and the best
    epoch's weights are kept; `history` then carries the metric per epoch."""
    model, text_on_device, generator, device = start_training(graph, text, config.encoder, config.seed,
                                                              config.device, initial_state)
    propagation = Propagation.from_graph(graph).to(device) if config.encoder.use_graph else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    pairs = len(users)
    if pairs == 0:
        raise ValueError("no positive pairs before the cutoff to fine-tune on")
    steps = math.ceil(pairs / config.batch_size)
    max_epochs = epochs or config.max_epochs
    progress = Progress(max_epochs * pairs, "pairs", log, label="fine-tuning")
    result = TrainResult(model, device=str(device))
    best, best_state, best_epoch, stale = -math.inf, None, 0, 0
    started = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(pairs, generator=generator)
        total = {"bpr": 0.0, "align": 0.0}
        for step in range(steps):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            emb = model(propagation, text_on_device)
            negatives = candidate_items[torch.randint(len(candidate_items), (len(batch),), generator=generator)]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = bpr_loss(emb, users[batch].to(device), items[batch].to(device), negatives.to(device),
                                weights[batch].to(device), l2=config.weight_decay)
                total["bpr"] += loss.item() / steps
                if text_on_device is not None and config.align_weight:
                    align = alignment_loss(model, emb, text_on_device, config.temperature, generator)
                    total["align"] += align.item() / steps
                    loss = loss + config.align_weight * align
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            optimizer.step()
            progress.advance(len(batch), note=f"epoch {epoch}")
        row = {"epoch": epoch, **total}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                metric = validate(model(propagation, text_on_device))
            row["validation"] = metric
            if metric > best:
                best, best_epoch, stale = metric, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        result.history.append(row)
        if log:
            log(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
        if validate is not None and stale >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.best_epoch = best_epoch or len(result.history)
    result.seconds = time.perf_counter() - started
    result.edges_per_second = len(result.history) * pairs / max(result.seconds, 1e-9)
    model.eval()
    return result


def embeddings(model: GraphEncoder, graph: KnowledgeGraph, text: TextView | None) -> torch.Tensor:
    """Final embeddings of all entities with a trained model (inference, on the model's device)."""
    device = next(model.parameters()).device
    propagation = Propagation.from_graph(graph).to(device) if model.config.use_graph else None
    with torch.no_grad():
        return model(propagation, text.for_model(model, device) if text is not None else None)
