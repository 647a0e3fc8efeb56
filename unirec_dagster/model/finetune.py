"""Fine-tuning on the target behaviour: (user, item) positive pairs before the cutoff, recent pairs
weighted up, starting from pretrained weights or from scratch, early-stopped on a validation
metric (or run for a fixed number of epochs, as chosen on validation earlier)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import FinetuneConfig
from unirec_dagster.model.encoder import GraphEncoder, Propagation, TextView
from unirec_dagster.model.objectives import link_loss, link_negatives, lookup
from unirec_dagster.model.pretrain import alignment_loss, alignment_pick
from unirec_dagster.model.trainer import Log, TrainResult, TrainSettings, build_model, train


def recency_weights(last_days: torch.Tensor, half_life_days: float) -> torch.Tensor:
    return torch.pow(0.5, last_days / half_life_days)


class FinetuneTask:
    """A sampled softmax (or BPR) on the positive pairs, negatives drawn from the candidate items,
    plus a little text-graph alignment so that items known by their text alone stay placeable."""

    unit = "pairs"

    def __init__(self, graph: KnowledgeGraph, text: TextView | None, config: FinetuneConfig, users: torch.Tensor,
                 items: torch.Tensor, weights: torch.Tensor, candidate_items: torch.Tensor):
        if len(users) == 0:
            raise ValueError("no positive pairs before the cutoff to fine-tune on")
        self.graph, self.config, self.text = graph, config, text
        self.users, self.items, self.pair_weights, self.candidates = users, items, weights, candidate_items
        self.examples_per_epoch = len(users)
        self.weights: dict[str, float] = {config.loss: 1.0}
        if text is not None and len(text.ids) and config.align_weight:
            self.weights["align"] = config.align_weight

    def start_epoch(self, generator: torch.Generator) -> Propagation | None:
        if not self.config.encoder.use_graph:
            return None
        if not hasattr(self, "_propagation"):  # the graph does not change between epochs
            self._propagation = Propagation.from_graph(self.graph, self.config.encoder)
        return self._propagation

    def batches(self, generator: torch.Generator):
        order = torch.randperm(self.examples_per_epoch, generator=generator)
        size = self.config.batch_size
        for step in range(math.ceil(self.examples_per_epoch / size)):
            yield order[step * size:(step + 1) * size]

    def loss(self, model: GraphEncoder, emb: torch.Tensor, batch: torch.Tensor,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        device, config = emb.device, self.config
        ids = {"users": self.users[batch], "items": self.items[batch],
               "negatives": link_negatives(config.loss, self.candidates, len(batch), config.negatives, generator)}
        text = self.text if "align" in self.weights else None
        if text is not None:
            aligned = alignment_pick(text, generator)
            ids["aligned"] = text.ids[aligned]
        rows = lookup(emb, ids)
        losses: dict[str, torch.Tensor] = {config.loss: link_loss(config.loss, rows["users"], rows["items"], rows["negatives"],
                                         config.loss_temperature, self.pair_weights[batch].to(device),
                                         l2=config.weight_decay)}
        if text is not None:
            if text.vectors.device != device:
                self.text = text = text.to(device)  # once: the text view stays on the training device
            losses["align"] = alignment_loss(model, rows["aligned"], text, aligned, config.temperature)
        return losses


def finetune(graph: KnowledgeGraph, text: TextView | None, config: FinetuneConfig, users: torch.Tensor,
             items: torch.Tensor, weights: torch.Tensor, candidate_items: torch.Tensor,
             initial_state: dict[str, torch.Tensor] | None = None,
             validate: Callable[[torch.Tensor], float] | None = None, epochs: int | None = None,
             log: Log | None = None) -> TrainResult:
    """`users`/`items` are entity ids of the positive pairs, `weights` their loss weights. With
    `validate` training stops after `patience` epochs without progress, keeping the best epoch."""
    task = FinetuneTask(graph, text, config, users, items, weights, candidate_items)
    model = build_model(graph, text, config.encoder, config.seed, initial_state)
    settings = TrainSettings(epochs or config.max_epochs, config.lr, config.seed, config.device,
                             patience=config.patience if validate is not None else None)
    return train(model, task, text, settings, validate, log, label="fine-tuning")
