"""The graph encoder: entity embeddings, a gated text view for items, LightGCN-style propagation
over every KG relation with learned relation weights, and a time-aware user readout.

Propagation multiplies by Σ_r w_r A_r, each A_r a relation's normalised adjacency, all stacked in
one CSR structure (`StackedAdjacency`): one sparse product per layer, with a backward that uses
the sum's symmetry (`RelationWeightedSpMM`). A whole-graph training step propagates the whole
graph once and the batch's losses read from the result; a sampled step (`model.sampling`) runs the
same layers over a sampled subgraph around what the losses read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import EncoderConfig


def normalized_entries(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values) of the symmetric D^-1/2 A D^-1/2 of the undirected graph of one relation."""
    heads, tails = edge_index
    src = torch.cat([heads, tails])
    dst = torch.cat([tails, heads])
    degree = torch.bincount(src, minlength=num_nodes).float().clamp(min=1)
    return src, dst, degree[src].rsqrt() * degree[dst].rsqrt()


@dataclass
class StackedAdjacency:
    """Every relation's normalised adjacency in one CSR structure: `rows`/`cols`/`values` of the
    stored entries sorted by row, `relation` of each entry (entries of different relations between
    the same two nodes stay apart). Σ_r w_r A_r is then one sparse product whose values are
    `values * w[relation]`, instead of one product, and one activation tensor, per relation."""

    crow: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    relation: torch.Tensor
    num_nodes: int

    @classmethod
    def from_entries(cls, parts: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]],
                     num_nodes: int) -> StackedAdjacency:
        """`parts`: (relation id, rows, cols, values) per relation."""
        rows = torch.cat([r for _, r, _, _ in parts]) if parts else torch.empty(0, dtype=torch.long)
        cols = torch.cat([c for _, _, c, _ in parts]) if parts else torch.empty(0, dtype=torch.long)
        values = torch.cat([v for _, _, _, v in parts]) if parts else torch.empty(0)
        relation = torch.cat([torch.full((len(r),), rid) for rid, r, _, _ in parts]) if parts else \
            torch.empty(0, dtype=torch.long)
        order = torch.argsort(rows * num_nodes + cols, stable=True)
        rows, cols, values, relation = rows[order], cols[order], values[order], relation[order]
        crow = torch.zeros(num_nodes + 1, dtype=torch.long)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=num_nodes), 0)
        return cls(crow, cols, values, relation, num_nodes)

    def to(self, device: torch.device) -> StackedAdjacency:
        return StackedAdjacency(self.crow.to(device), self.cols.to(device), self.values.to(device),
                                self.relation.to(device), self.num_nodes)

    def weighted(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ_r weights[r] A_r as a CSR matrix (no autograd)."""
        return torch.sparse_csr_tensor(self.crow, self.cols, self.values * weights[self.relation].detach(),
                                       (self.num_nodes, self.num_nodes), check_invariants=False)

    @functools.cached_property
    def by_relation(self) -> dict[int, torch.Tensor]:
        """Each relation's own CSR, for the relation weights' gradient; built on first use, so that
        a sampled-subgraph run never holds the graph twice."""
        rows = torch.repeat_interleave(torch.arange(self.num_nodes, device=self.crow.device), self.crow.diff())
        out = {}
        for rid in self.relation.unique().tolist():
            keep = self.relation == rid  # a subset of row-sorted entries stays sorted
            crow = torch.zeros_like(self.crow)
            crow[1:] = torch.cumsum(torch.bincount(rows[keep], minlength=self.num_nodes), 0)
            out[rid] = torch.sparse_csr_tensor(crow, self.cols[keep], self.values[keep],
                                               (self.num_nodes, self.num_nodes), check_invariants=False)
        return out


class RelationWeightedSpMM(torch.autograd.Function):
    """(Σ_r w_r A_r) @ x for symmetric per-relation adjacencies stacked in one CSR: one sparse
    product forward and one backward (the sum is symmetric). The gradient of each w_r is
    <grad, A_r x>, one product per relation into a reused buffer (gathering every entry's rows
    instead made a step 4-8x slower)."""

    @staticmethod
    def forward(ctx, stack: StackedAdjacency, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = stack.weighted(weights)
        ctx.stack, ctx.a = stack, a
        ctx.save_for_backward(weights, x)
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, x = ctx.saved_tensors
        stack = ctx.stack
        grad_weights = None
        if ctx.needs_input_grad[1]:
            grad_weights = torch.zeros_like(weights)
            buffer = torch.empty_like(x)
            for rid, a in stack.by_relation.items():
                torch.mm(a, x, out=buffer)
                grad_weights[rid] = torch.vdot(grad.reshape(-1), buffer.reshape(-1))
        return None, grad_weights, ctx.a @ grad


def readout_matrix(edge_index: torch.Tensor, weight: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-normalised head -> tail weights (each head's weights sum to 1) and their transpose, CSR."""
    heads, tails = edge_index
    total = torch.zeros(num_nodes).index_add_(0, heads, weight.float()).clamp(min=1e-12)
    values = weight.float() / total[heads]
    a = torch.sparse_coo_tensor(torch.stack([heads, tails]), values, (num_nodes, num_nodes),
                                check_invariants=False).coalesce()
    return a.to_sparse_csr(), a.t().coalesce().to_sparse_csr()


class SparseMM(torch.autograd.Function):
    """a @ x for a sparse `a` whose transpose is given, so backward needs no transpose per step."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a_t)
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (a_t,) = ctx.saved_tensors
        return None, None, a_t @ grad


@dataclass
class TextView:
    """Entity ids of items with a text vector and the vectors (rows aligned)."""

    ids: torch.Tensor
    vectors: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if len(self.ids) else 0

    def to(self, device: torch.device) -> TextView:
        return TextView(self.ids.to(device), self.vectors.to(device))

    def for_model(self, model: GraphEncoder, device: torch.device) -> TextView | None:
        """This view on `device` when the model has a text view and there are texts, else None."""
        return self.to(device) if model.text_dim and len(self.ids) else None


@dataclass
class Propagation:
    """What the encoder propagates over: every relation's normalised adjacency, stacked, the
    optional time-aware user readout (row-normalised time-decayed interaction weights, and its
    transpose), and the items nobody has interacted with (`unseen_items`, entity ids)."""

    adjacency: StackedAdjacency
    readout: tuple[torch.Tensor, torch.Tensor] | None = None
    unseen_items: torch.Tensor | None = None

    @classmethod
    def from_graph(cls, graph: KnowledgeGraph, config: EncoderConfig,
                   drop: dict[str, torch.Tensor] | None = None) -> Propagation:
        """`drop` maps a relation name to a boolean mask of its edges to leave out (masked attributes)."""
        parts = []
        for rid, name in enumerate(graph.relation_names):
            edges = graph.edge_index[name]
            if drop and name in drop:
                edges = edges[:, ~drop[name]]
            if edges.shape[1]:
                parts.append((rid, *normalized_entries(edges, graph.num_entities)))
        adjacency = StackedAdjacency.from_entries(parts, graph.num_entities)
        readout = None
        positive = graph.positive_relation
        if config.user_readout and positive and graph.edge_index[positive].shape[1]:
            readout = readout_matrix(graph.edge_index[positive], graph.edge_weight[positive], graph.num_entities)
        return cls(adjacency, readout, unseen_items(graph))

    def to(self, device: torch.device) -> Propagation:
        return Propagation(self.adjacency.to(device),
                           (self.readout[0].to(device), self.readout[1].to(device)) if self.readout else None,
                           self.unseen_items.to(device) if self.unseen_items is not None else None)


def unseen_items(graph: KnowledgeGraph) -> torch.Tensor:
    """Entity ids of the items without any user->item edge (listed in the catalog only)."""
    interacted = torch.zeros(graph.num_entities, dtype=torch.bool)
    for name, kinds in zip(graph.relation_names, graph.relation_types):
        if kinds == ("user", "item"):
            interacted[graph.edge_index[name][1]] = True
    items = graph.nodes_of_type("item")
    return items[~interacted[items]]


class GraphEncoder(nn.Module):
    def __init__(self, num_entities: int, num_relations: int, config: EncoderConfig, text_dim: int = 0):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(num_entities, config.dim)
        nn.init.normal_(self.embedding.weight, std=config.init_std)
        self.relation_logits = nn.Parameter(torch.zeros(num_relations))      # propagation weight per relation
        self.relation_vectors = nn.Parameter(torch.ones(num_relations, config.dim))  # DistMult diagonal
        self.readout_gate = nn.Parameter(torch.zeros(config.dim))
        self.text_dim = text_dim if config.use_text else 0
        if self.text_dim:
            self.text_in = nn.Linear(self.text_dim, config.dim)
            self.text_gate = nn.Parameter(torch.zeros(config.dim))
            # Maps a text vector into the graph's space: the aligned text view (cold items).
            self.text_out = nn.Sequential(nn.Linear(self.text_dim, config.dim), nn.Tanh(),
                                          nn.Linear(config.dim, config.dim))

    @property
    def num_entities(self) -> int:
        return self.embedding.num_embeddings

    def inputs(self, propagation: Propagation | None, text: TextView | None = None) -> torch.Tensor:
        """Layer-0 rows of all entities, (num_entities, dim): the ID embedding plus the item's gated,
        projected text vector."""
        x = self.embedding.weight
        if propagation is not None and propagation.unseen_items is not None and len(propagation.unseen_items):
            # An item nobody has interacted with has no learned identity: its ID row would only add
            # noise. It is placed by its text and attributes alone. Strict item cold start on Online
            # Retail (BENCHMARKS.md): served Recall@20 on the hidden items 0.0954 with, 0.0758 without.
            x = x.index_fill(0, propagation.unseen_items, 0.0)
        if self.text_dim and text is not None and len(text.ids):
            x = x.index_add(0, text.ids, torch.sigmoid(self.text_gate) * self.text_in(text.vectors))
        return x

    @property
    def propagates(self) -> bool:
        return self.config.use_graph and self.config.layers > 0

    def forward(self, propagation: Propagation | None, text: TextView | None = None) -> torch.Tensor:
        """Final embeddings of all entities: (num_entities, dim)."""
        x = self.inputs(propagation, text)
        if not self.propagates or propagation is None:
            return x
        weights = torch.softmax(self.relation_logits, 0)
        layer, total = x, x
        for _ in range(self.config.layers):
            layer = RelationWeightedSpMM.apply(propagation.adjacency, weights, layer)
            total = total + layer
        out = total / (self.config.layers + 1)
        if propagation.readout is not None:
            # A user also reads their items through the time-decayed interaction weights of the
            # snapshot's target behaviour: recent purchases count most, and a user the last
            # training never saw (or saw with an older history) still gets a vector from what they
            # did since. Online Retail, validation window before 2011-11-25: model Recall@20 0.1177
            # and blend 0.1526 with it, 0.1145 and 0.1467 without (over all user->item relations
            # with learned weights: 0.1109 and 0.1459).
            out = out + torch.sigmoid(self.readout_gate) * SparseMM.apply(*propagation.readout, out)
        return out

    @torch.no_grad()
    def get_embedding(self, propagation: Propagation | None, text: TextView | None = None) -> torch.Tensor:
        """Final embeddings of all entities for inference: (num_entities, dim), no autograd."""
        was_training = self.training
        self.eval()
        emb = self(propagation, text)
        self.train(was_training)
        return emb

    def embed_graph(self, graph: KnowledgeGraph, text: TextView | None = None) -> torch.Tensor:
        """`get_embedding` over a KG snapshot, on the model's device."""
        device = self.embedding.weight.device
        propagation = Propagation.from_graph(graph, self.config).to(device) if self.config.use_graph else None
        return self.get_embedding(propagation, text.for_model(self, device) if text is not None else None)

    def text_embedding(self, text_vectors: torch.Tensor) -> torch.Tensor:
        """An item's embedding from its text alone, in the same space as the graph view."""
        if not self.text_dim:
            raise ValueError("this model has no text view (encoder.use_text was false)")
        return self.text_out(text_vectors)

    @torch.no_grad()
    def cold_item_embedding(self, text_vectors: torch.Tensor) -> torch.Tensor:
        """Embeddings for items known only by their text (no interactions): the aligned text view."""
        return self.text_embedding(text_vectors.to(self.embedding.weight.device))

    def relation_weights(self, names: list[str]) -> dict[str, float]:
        weights = torch.softmax(self.relation_logits.detach(), 0).tolist()
        return dict(zip(names, weights))

    # Rows that map by stable id: row i is entity (or relation) i in every version of the KG.
    GROWABLE = ("embedding.weight", "relation_logits", "relation_vectors")

    @torch.no_grad()
    def warm_start(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy a previous model's weights into this one. Entity and relation rows map by their
        stable id, so old rows are kept and rows of new entities keep their fresh initialisation.
        Returns the names of tensors that could not be carried over."""
        skipped = []
        own = self.state_dict()
        for name, value in state.items():
            target = own.get(name)
            if target is None:
                skipped.append(name)
            elif target.shape == value.shape:
                target.copy_(value)
            elif name in self.GROWABLE and target.shape[1:] == value.shape[1:] and value.shape[0] <= target.shape[0]:
                target[: value.shape[0]].copy_(value)
            else:
                skipped.append(name)
        return skipped
