"""Multi-task self-supervised pretraining of the graph encoder.

Every step propagates the whole KG once, then adds up, each with its configured weight:
link prediction (BPR) on user->item edges, DistMult triple completion on the other relations,
masked attribute prediction (an item attribute hidden from the graph for a share of items each
epoch) and InfoNCE alignment of each item's graph embedding with its text embedding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import EncoderConfig, PretrainConfig
from unirec_dagster.model.device import choose_device
from unirec_dagster.model.checkpoint import warm_start
from unirec_dagster.model.encoder import GraphEncoder, Propagation, TextView
from unirec_dagster.model.objectives import bpr_loss, distmult_loss, info_nce, masked_attribute_loss
from unirec_dagster.progress import Progress

ALIGN_BATCH = 1024  # items per InfoNCE step: in-batch negatives, a 1024 x 1024 logit matrix


@dataclass
class TrainResult:
    model: GraphEncoder
    history: list[dict[str, float]] = field(default_factory=list)   # one row per epoch: losses (and metrics)
    seconds: float = 0.0
    edges_per_second: float = 0.0
    device: str = "cpu"
    best_epoch: int = 0                                              # fine-tuning with validation
    batch_size: int = 0                                              # pretraining: edges per step, as grown


def alignment_loss(model: GraphEncoder, emb: torch.Tensor, text: TextView, temperature: float,
                   generator: torch.Generator) -> torch.Tensor:
    """InfoNCE between the graph and text embeddings of a random batch of items with text."""
    pick = torch.randperm(len(text.ids), generator=generator)[:ALIGN_BATCH].to(text.ids.device)
    return info_nce(emb[text.ids[pick]], model.text_embedding(text.vectors[pick]), temperature)


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


def start_training(graph: KnowledgeGraph, text: TextView | None, encoder: EncoderConfig, seed: int, device_name: str,
                   initial_state: dict[str, torch.Tensor] | None):
    """(model, text view on its device, sampling generator, device) for a seeded run, the model
    warm-started from `initial_state` when given. Pretraining and fine-tuning start alike."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = choose_device(device_name)
    model = GraphEncoder(graph.num_entities, len(graph.relation_names), encoder, text.dim if text is not None else 0)
    if initial_state is not None:
        warm_start(model, initial_state)
    model.to(device)
    return model, text.for_model(model, device) if text is not None else None, generator, device


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


def pretrain(graph: KnowledgeGraph, text: TextView | None, config: PretrainConfig, positive_relation: str | None,
             initial_state: dict[str, torch.Tensor] | None = None,
             log: Callable[[str], None] | None = None) -> TrainResult:
    model, text_on_device, generator, device = start_training(graph, text, config.encoder, config.seed,
                                                              config.device, initial_state)

    links = interaction_relations(graph, positive_relation)
    link_edges = torch.cat([graph.edge_index[n] for n in links], 1) if links else torch.empty((2, 0), dtype=torch.long)
    items = graph.nodes_of_type("item")
    kg = _KgEdges(graph, set(links))
    masked = config.masked_relation or default_masked_relation(graph)
    if masked is not None and masked not in graph.relation_names:
        raise ValueError(f"masked_relation {masked!r} is not a KG relation; known: {graph.relation_names}")
    mask_edges = graph.edge_index[masked] if masked else torch.empty((2, 0), dtype=torch.long)
    candidates = torch.unique(mask_edges[1])
    position = torch.full((graph.num_entities,), -1, dtype=torch.long)
    position[candidates] = torch.arange(len(candidates))

    weights = {"link": config.link_weight if link_edges.shape[1] and len(items) else 0.0,
               "kg": config.kg_weight if kg.count else 0.0,
               "mask": config.mask_weight if len(candidates) > 1 else 0.0,
               "align": config.align_weight if text_on_device is not None else 0.0}
    active = {k: w for k, w in weights.items() if w > 0}
    if not active:
        raise ValueError("nothing to pretrain on: the KG has no interaction, attribute or text signal")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    edges = max(link_edges.shape[1], 1)
    batch_size = max(config.batch_size, math.ceil(edges / config.max_steps_per_epoch))
    steps = math.ceil(edges / batch_size)
    if log:
        log(f"pretraining on {device}: {edges:,} interaction edges, {steps} steps of {batch_size:,} per epoch, "
            f"objectives {active}")
    progress = Progress(config.epochs * edges, "edges", log, label="pretraining")
    result = TrainResult(model, device=str(device), batch_size=batch_size)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        # Hide the masked attribute of a fresh share of items from the graph for this epoch.
        hidden = torch.rand(mask_edges.shape[1], generator=generator) < config.mask_share
        propagation = Propagation.from_graph(graph, {masked: hidden} if masked else None).to(device)
        masked_items, masked_values = mask_edges[0, hidden], position[mask_edges[1, hidden]]
        order = torch.randperm(edges, generator=generator)
        totals = dict.fromkeys(active, 0.0)
        model.train()
        for step in range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            n = len(batch)
            emb = model(propagation, text_on_device)
            losses = {}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                if "link" in active:
                    users, positives = link_edges[:, batch]
                    negatives = items[torch.randint(len(items), (n,), generator=generator)]
                    losses["link"] = bpr_loss(emb, users.to(device), positives.to(device), negatives.to(device),
                                              l2=config.weight_decay)
                if "kg" in active:
                    heads, rels, tails, corrupted = (t.to(device) for t in kg.sample(n, generator))
                    losses["kg"] = distmult_loss(emb, model.relation_vectors, heads, rels, tails, corrupted)
                if "mask" in active and len(masked_items):
                    pick = torch.randint(len(masked_items), (min(n, len(masked_items)),), generator=generator)
                    losses["mask"] = masked_attribute_loss(emb, masked_items[pick].to(device),
                                                           masked_values[pick].to(device), candidates.to(device))
                if "align" in active:
                    losses["align"] = alignment_loss(model, emb, text_on_device, config.temperature, generator)
            loss = sum(active[k] * v.float() for k, v in losses.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in losses.items():
                totals[k] += v.item() / steps
            progress.advance(n if link_edges.shape[1] else 0, note=f"epoch {epoch + 1}/{config.epochs}")
        result.history.append({"epoch": epoch + 1, **totals})
        if log:
            log(f"epoch {epoch + 1}/{config.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in totals.items()))
    result.seconds = time.perf_counter() - started
    result.edges_per_second = config.epochs * link_edges.shape[1] / max(result.seconds, 1e-9)
    model.eval()
    return result
