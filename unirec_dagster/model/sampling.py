"""Sampled-subgraph training: each step embeds only the entities its losses read, each from a
sampled neighbourhood, in the spirit of PinSage and PyG's `NeighborLoader`.

The full-graph step propagates every entity (16M adjacency entries per layer on the 10M-event
graph), whatever the batch. Here a lookup `emb[ids]` samples, for each of the ids, at most
`fanouts[0]` of its stored entries (over all relations), then at most `fanouts[1]` of each newly
reached entity's, and so on for each layer; the layers then run over that small subgraph only. A
sampled entry's value is scaled by degree / drawn, so each layer is an unbiased estimate of the
full one. The time-aware user readout is sampled the same way. A step's cost and memory follow the
batch and the fanouts, not the graph; inference (validation, serving) stays full-graph.
"""

from __future__ import annotations

import torch

from unirec_dagster.model.encoder import GraphEncoder, Propagation, TextView


def sample_entries(crow: torch.Tensor, nodes: torch.Tensor, fanout: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For CSR rows `nodes`: every entry of a row with at most `fanout` entries, else `fanout`
    uniform draws (with replacement). Returns (index into `nodes` of each sampled entry, the
    entry's position in the CSR arrays, degree / drawn: the weight that keeps the sum unbiased)."""
    start = crow[nodes]
    degree = crow[nodes + 1] - start
    drawn = degree.clamp(max=fanout)
    owner = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), drawn)
    first = torch.repeat_interleave(torch.cumsum(drawn, 0) - drawn, drawn)
    offset = torch.arange(len(owner), device=nodes.device) - first   # 0.. drawn-1 within each row
    whole = degree[owner] <= fanout
    random = torch.rand(len(owner), generator=generator).to(nodes.device)
    offset = torch.where(whole, offset, (random * degree[owner]).long())
    return owner, start[owner] + offset, degree[owner].float() / drawn[owner].float()


class NeighbourSampler:
    """The graph structure a sampled step reads from: the stacked adjacency, the user readout and
    the fanout of each layer (the last one repeats when there are more layers than fanouts)."""

    def __init__(self, propagation: Propagation, fanouts: list[int], layers: int):
        if not fanouts or min(fanouts) < 1:
            raise ValueError(f"fanouts must be positive integers, got {fanouts}")
        self.propagation = propagation
        self.fanouts = [fanouts[min(i, len(fanouts) - 1)] for i in range(layers)]

    def subgraph(self, seeds: torch.Tensor, weights: torch.Tensor, generator: torch.Generator):
        """The sampled edges of the layers around `seeds` (unique entity ids): (nodes, rows, cols,
        values, ends) with `rows`/`cols` local indices into `nodes`, `nodes` sorted, `values`
        carrying the relation weights (autograd flows into `weights`), the edges in hop order and
        `ends[h]` the number of edges drawn in hops 0..h."""
        adjacency = self.propagation.adjacency
        expanded = torch.zeros(adjacency.num_nodes, dtype=torch.bool, device=seeds.device)
        frontier, heads, tails, values = seeds, [], [], []
        for fanout in self.fanouts:
            expanded[frontier] = True
            owner, entry, scale = sample_entries(adjacency.crow, frontier, fanout, generator)
            heads.append(frontier[owner])
            tails.append(adjacency.cols[entry])
            values.append(adjacency.values[entry] * scale * weights[adjacency.relation[entry]])
            reached = tails[-1].unique()
            frontier = reached[~expanded[reached]]  # each entity's neighbours are drawn once
        ends = torch.cumsum(torch.tensor([len(h) for h in heads]), 0).tolist()
        head_ids, tail_ids = torch.cat(heads), torch.cat(tails)
        nodes = torch.cat([seeds, tail_ids]).unique()
        return nodes, torch.searchsorted(nodes, head_ids), torch.searchsorted(nodes, tail_ids), torch.cat(values), ends

    def embed(self, model: GraphEncoder, x: torch.Tensor, ids: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
        """Final embeddings of `ids` (any order, repeats allowed) from the layer-0 rows `x` of all
        entities: GraphEncoder.forward's computation, restricted to a sampled subgraph."""
        wanted = seeds = ids.unique()
        readout = None
        if self.propagation.readout is not None:
            a = self.propagation.readout[0]
            owner, entry, scale = sample_entries(a.crow_indices(), seeds, self.fanouts[0], generator)
            readout = (owner, a.col_indices()[entry], a.values()[entry] * scale)
            seeds = torch.cat([seeds, readout[1]]).unique()  # the read items need their own embeddings
        weights = torch.softmax(model.relation_logits, 0)
        nodes, rows, cols, values, ends = self.subgraph(seeds, weights, generator)
        layer = total = x[nodes]
        for depth in range(len(self.fanouts)):
            # Layer depth+1 is read only within the hops that the remaining layers reach back to:
            # the last layer needs the seeds' own edges alone.
            used = ends[len(self.fanouts) - 1 - depth]
            layer = torch.zeros_like(layer).index_add(0, rows[:used], layer[cols[:used]] * values[:used, None])
            total = total + layer
        out = total / (len(self.fanouts) + 1)
        rows_out = out[torch.searchsorted(nodes, wanted)]
        if readout is not None:
            owner, items, share = readout
            read = torch.zeros_like(rows_out).index_add(0, owner, out[torch.searchsorted(nodes, items)] * share[:, None])
            rows_out = rows_out + torch.sigmoid(model.readout_gate) * read
        return rows_out[torch.searchsorted(wanted, ids)]


class SampledEmbedding:
    """What a task's `loss` indexes as `emb[ids]` in a sampled step: each lookup embeds those ids
    from a fresh sampled neighbourhood. The layer-0 rows are computed once per step."""

    def __init__(self, model: GraphEncoder, sampler: NeighbourSampler, text: TextView | None,
                 generator: torch.Generator):
        self.model, self.sampler, self.generator = model, sampler, generator
        self.x = model.inputs(sampler.propagation, text)
        self.device = self.x.device

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.sampler.embed(self.model, self.x, ids, self.generator)
