"""Multi-task self-supervised pretraining of the graph encoder.

Every step propagates the whole KG once, then adds up, each with its configured weight:
link prediction (a sampled softmax, as fine-tuning) on user->item edges, DistMult triple completion on the other relations,
masked attribute prediction (an item attribute hidden from the graph for a share of items each
epoch) and InfoNCE alignment of each item's graph embedding with its text embedding.
"""

from __future__ import annotations

import math

import torch

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import PretrainConfig
from unirec_dagster.model.encoder import GraphEncoder, Propagation, TextView
from unirec_dagster.model.objectives import (
    distmult_loss,
    info_nce,
    link_loss,
    link_negatives,
    lookup,
    masked_attribute_loss,
)
from unirec_dagster.model.trainer import Log, TrainResult, TrainSettings, build_model, train

ALIGN_BATCH = 1024  # items per InfoNCE step: in-batch negatives, a 1024 x 1024 logit matrix


def alignment_pick(text: TextView, generator: torch.Generator) -> torch.Tensor:
    """A random batch of items with text (positions in `text`) for the InfoNCE alignment."""
    return torch.randperm(len(text.ids), generator=generator)[:ALIGN_BATCH]


def alignment_loss(model: GraphEncoder, graph_rows: torch.Tensor, text: TextView, pick: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """InfoNCE between the graph rows of the picked items and their text embeddings."""
    return info_nce(graph_rows, model.text_embedding(text.vectors[pick.to(text.vectors.device)]), temperature)


def interaction_relations(graph: KnowledgeGraph, positive: str | None = None) -> list[str]:
    """The user->item relations; only the positive one when it is given and present."""
    names = [n for n, (h, t) in zip(graph.relation_names, graph.relation_types) if (h, t) == ("user", "item")]
    return [positive] if positive in names else names


def default_masked_relation(graph: KnowledgeGraph) -> str | None:
    """The first item attribute from the spec (category, brand, ...), else the price band."""
    generic = {"item_keyword", "item_co_occurs", "item_price_band"}
    names = [n for n, (h, _) in zip(graph.relation_names, graph.relation_types)
             if h == "item" and n.startswith("item_") and n not in generic and graph.edge_index[n].shape[1]]
    if names:
        return sorted(names)[0]
    return "item_price_band" if "item_price_band" in graph.relation_names else None


class _KgEdges:
    """All non-interaction triples, sorted by relation, with type-correct corrupted tails."""

    def __init__(self, graph: KnowledgeGraph, skip: set[str]):
        parts = [(rid, graph.edge_index[n]) for rid, n in enumerate(graph.relation_names)
                 if n not in skip and graph.edge_index[n].shape[1]]
        self.count = sum(e.shape[1] for _, e in parts)
        if not self.count:
            return
        self.heads = torch.cat([e[0] for _, e in parts])
        self.tails = torch.cat([e[1] for _, e in parts])
        self.relations = torch.cat([torch.full((e.shape[1],), rid) for rid, e in parts])
        sizes = torch.tensor([e.shape[1] for _, e in parts])
        starts = torch.cumsum(sizes, 0) - sizes
        per_relation = torch.zeros(len(graph.relation_names), dtype=torch.long)
        self.start = per_relation.clone().index_put_((torch.tensor([r for r, _ in parts]),), starts)
        self.size = per_relation.index_put_((torch.tensor([r for r, _ in parts]),), sizes)

    def sample(self, n: int, generator: torch.Generator):
        idx = torch.randint(self.count, (n,), generator=generator)
        rel = self.relations[idx]
        # A corrupted tail is the tail of another triple of the same relation: right type, and
        # drawn by how often it occurs, so negatives are not trivially rare values.
        other = self.start[rel] + (torch.rand(n, generator=generator) * self.size[rel]).long()
        return self.heads[idx], rel, self.tails[idx], self.tails[other]


def pretraining_batch_size(edges: int, config: PretrainConfig) -> int:
    """A whole-graph step propagates the whole KG: on large graphs the batch grows so that an epoch
    stays within max_steps_per_epoch steps (BENCHMARKS.md: ~8 s per step on 8M triples). A sampled
    step costs what its batch reads, so its batch stays as configured."""
    if config.fanouts:
        return config.batch_size
    return max(config.batch_size, math.ceil(edges / config.max_steps_per_epoch))


class PretrainTask:
    """Four self-supervised objectives on one KG, each step on one propagation of the whole graph:
    link prediction on user->item edges, DistMult triple completion on the other relations,
    masked attribute prediction (an item attribute hidden from the graph for a share of items
    each epoch) and InfoNCE alignment of each item's graph and text embeddings."""

    unit = "edges"

    def __init__(self, graph: KnowledgeGraph, text: TextView | None, config: PretrainConfig,
                 positive_relation: str | None):
        self.graph, self.config = graph, config
        links = interaction_relations(graph, positive_relation)
        self.link_edges = (torch.cat([graph.edge_index[n] for n in links], 1) if links
                           else torch.empty((2, 0), dtype=torch.long))
        # Link negatives are items someone interacted with: a catalog-only item would otherwise
        # only ever be a negative, and be taught to score below everything.
        self.items = torch.unique(self.link_edges[1]) if self.link_edges.shape[1] else graph.nodes_of_type("item")
        self.kg = _KgEdges(graph, set(links))
        self.masked = config.masked_relation or default_masked_relation(graph)
        if self.masked is not None and self.masked not in graph.relation_names:
            raise ValueError(f"masked_relation {self.masked!r} is not a KG relation; known: {graph.relation_names}")
        self.mask_edges = graph.edge_index[self.masked] if self.masked else torch.empty((2, 0), dtype=torch.long)
        self.candidates = torch.unique(self.mask_edges[1])
        self.position = torch.full((graph.num_entities,), -1, dtype=torch.long)
        self.position[self.candidates] = torch.arange(len(self.candidates))
        self.text = text
        weights = {"link": config.link_weight if self.link_edges.shape[1] and len(self.items) else 0.0,
                   "kg": config.kg_weight if self.kg.count else 0.0,
                   "mask": config.mask_weight if len(self.candidates) > 1 else 0.0,
                   "align": config.align_weight if text is not None and len(text.ids) else 0.0}
        self.weights = {k: w for k, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("nothing to pretrain on: the KG has no interaction, attribute or text signal")
        self.examples_per_epoch = max(self.link_edges.shape[1], 1)
        self.batch_size = pretraining_batch_size(self.examples_per_epoch, config)
        self.steps = math.ceil(self.examples_per_epoch / self.batch_size)

    def start_epoch(self, generator: torch.Generator) -> Propagation:
        hidden = torch.rand(self.mask_edges.shape[1], generator=generator) < self.config.mask_share
        self.masked_items = self.mask_edges[0, hidden]
        self.masked_values = self.position[self.mask_edges[1, hidden]]
        # The hidden attribute edges are left out of this epoch's propagation.
        return Propagation.from_graph(self.graph, self.config.encoder, {self.masked: hidden} if self.masked else None)

    def batches(self, generator: torch.Generator):
        order = torch.randperm(self.examples_per_epoch, generator=generator)
        for step in range(self.steps):
            yield order[step * self.batch_size:(step + 1) * self.batch_size]

    def loss(self, model: GraphEncoder, emb: torch.Tensor, batch: torch.Tensor,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        n, config, ids = len(batch), self.config, {}
        if "link" in self.weights:
            ids["users"], ids["positives"] = self.link_edges[:, batch]
            ids["negatives"] = link_negatives(config.link_loss, self.items, n, config.negatives, generator)
        if "kg" in self.weights:
            ids["heads"], relations, ids["tails"], ids["corrupted"] = self.kg.sample(n, generator)
        masking = "mask" in self.weights and len(self.masked_items)
        if masking:
            pick = torch.randint(len(self.masked_items), (min(n, len(self.masked_items)),), generator=generator)
            ids["masked"], ids["candidates"], targets = self.masked_items[pick], self.candidates, self.masked_values[pick]
        text = self.text if "align" in self.weights else None
        if text is not None:
            aligned = alignment_pick(text, generator)
            ids["aligned"] = text.ids[aligned]
        rows, device, losses = lookup(emb, ids), emb.device, {}
        if "link" in self.weights:
            losses["link"] = link_loss(config.link_loss, rows["users"], rows["positives"], rows["negatives"],
                                       config.loss_temperature, l2=config.weight_decay)
        if "kg" in self.weights:
            losses["kg"] = distmult_loss(rows["heads"], model.relation_vectors[relations.to(device)], rows["tails"],
                                         rows["corrupted"])
        if masking:
            losses["mask"] = masked_attribute_loss(rows["masked"], targets.to(device), rows["candidates"])
        if text is not None:
            if text.vectors.device != device:
                self.text = text = text.to(device)  # once: the text view stays on the training device
            losses["align"] = alignment_loss(model, rows["aligned"], text, aligned, config.temperature)
        return losses


def pretrain(graph: KnowledgeGraph, text: TextView | None, config: PretrainConfig, positive_relation: str | None,
             initial_state: dict[str, torch.Tensor] | None = None, log: Log | None = None) -> TrainResult:
    task = PretrainTask(graph, text, config, positive_relation)
    model = build_model(graph, text, config.encoder, config.seed, initial_state)
    if log:
        log(f"pretraining: {task.examples_per_epoch:,} interaction edges, {task.steps} steps of "
            f"{task.batch_size:,} per epoch, objectives {task.weights}")
    return train(model, task, text, TrainSettings(config.epochs, config.lr, config.seed, config.device,
                                                  fanouts=config.fanouts), log=log, label="pretraining")
