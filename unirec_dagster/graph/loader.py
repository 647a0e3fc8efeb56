"""Load a KG snapshot from DuckDB into PyTorch tensors, through Arrow, with no loop over rows."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unirec_dagster.graph.params import KGParams
from unirec_dagster.warehouse import rows


@dataclass
class KnowledgeGraph:
    """Entity ids are global and stable, so entities of one type are not contiguous: instead of
    type offsets, `entity_type[i]` is the type of entity i and `nodes_of_type` lists a type's ids."""

    snapshot_date: dt.date
    num_entities: int
    entity_type: torch.Tensor           # (num_entities,) index into type_names; -1 for ids not in use
    type_names: list[str]
    relation_names: list[str]           # index = relation_id
    relation_types: list[tuple[str, str]]  # (head type, tail type) per relation_id
    edge_index: dict[str, torch.Tensor]    # relation name -> (2, E) long: head ids, tail ids
    edge_weight: dict[str, torch.Tensor]   # relation name -> (E,) float
    positive_relation: str | None = None   # the user -> item relation of the target behaviour

    def nodes_of_type(self, name: str) -> torch.Tensor:
        return torch.nonzero(self.entity_type == self.type_names.index(name), as_tuple=True)[0]

    def item_value_edges(self, skip: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads, tails): item -> attribute value and item -> keyword edges (relations named
        `item_*`, except those in `skip`), the spec's attributes before keywords."""
        names = [n for n, (head, _) in zip(self.relation_names, self.relation_types)
                 if head == "item" and n.startswith("item_") and n not in skip]
        names.sort(key=lambda n: n == "item_keyword")
        if not names:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        return torch.cat([self.edge_index[n][0] for n in names]), torch.cat([self.edge_index[n][1] for n in names])

    def without_interactions(self, items: torch.Tensor) -> KnowledgeGraph:
        """The snapshot with every user<->item edge of `items` (entity ids) removed: those items keep
        their attributes and keywords, as catalog items nobody has interacted with."""
        edge_index, edge_weight = dict(self.edge_index), dict(self.edge_weight)
        for name, kinds in zip(self.relation_names, self.relation_types):
            if set(kinds) == {"user", "item"}:
                keep = ~torch.isin(self.edge_index[name][kinds.index("item")], items.to(self.entity_type.device))
                edge_index[name], edge_weight[name] = self.edge_index[name][:, keep], self.edge_weight[name][keep]
        return KnowledgeGraph(self.snapshot_date, self.num_entities, self.entity_type, self.type_names,
                              self.relation_names, self.relation_types, edge_index, edge_weight,
                              self.positive_relation)

    def to(self, device: torch.device | str) -> KnowledgeGraph:
        return KnowledgeGraph(
            self.snapshot_date, self.num_entities, self.entity_type.to(device), self.type_names,
            self.relation_names, self.relation_types,
            {k: v.to(device) for k, v in self.edge_index.items()},
            {k: v.to(device) for k, v in self.edge_weight.items()}, self.positive_relation,
        )


def save_graph_file(graph: KnowledgeGraph, path: Path) -> None:
    """The snapshot's tensors as safetensors, its names and types as the file's metadata: what a
    training worker in another process (or on another machine) needs instead of the warehouse."""
    tensors = {"entity_type": graph.entity_type.contiguous()}
    for name in graph.relation_names:
        tensors[f"edge_index/{name}"] = graph.edge_index[name].contiguous()
        tensors[f"edge_weight/{name}"] = graph.edge_weight[name].contiguous()
    about = {"snapshot_date": graph.snapshot_date.isoformat(), "num_entities": graph.num_entities,
             "type_names": graph.type_names, "relation_names": graph.relation_names,
             "relation_types": graph.relation_types, "positive_relation": graph.positive_relation}
    save_file(tensors, str(path), metadata={"graph": json.dumps(about)})


def load_graph_file(path: Path) -> KnowledgeGraph:
    with safe_open(str(path), "pt") as handle:
        about = json.loads(handle.metadata()["graph"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    names = about["relation_names"]
    return KnowledgeGraph(dt.date.fromisoformat(about["snapshot_date"]), about["num_entities"], tensors["entity_type"],
                          about["type_names"], names, [tuple(t) for t in about["relation_types"]],
                          {n: tensors[f"edge_index/{n}"] for n in names}, {n: tensors[f"edge_weight/{n}"] for n in names},
                          about["positive_relation"])


def latest_snapshot(conn: duckdb.DuckDBPyConnection) -> dt.date | None:
    return rows(conn, "SELECT max(snapshot_date) FROM kg.snapshots")[0][0]


def snapshot_params(conn: duckdb.DuckDBPyConnection, snapshot_date: dt.date) -> KGParams:
    """The parameters the snapshot of `snapshot_date` was built with; LookupError when it is absent."""
    found = rows(conn, "SELECT params FROM kg.snapshots WHERE snapshot_date = $d", {"d": snapshot_date})
    if not found:
        raise LookupError(f"no KG snapshot of {snapshot_date} in the warehouse: materialize the knowledge_graph "
                          f"partition {snapshot_date} first (it builds the snapshots the models of that day read)")
    return KGParams.model_validate_json(found[0][0])


def load_graph(conn: duckdb.DuckDBPyConnection, snapshot_date: dt.date | None = None,
               entities_of: dt.date | None = None) -> KnowledgeGraph:
    """The KG snapshot of `snapshot_date` (default: the newest) as tensors; LookupError when the
    warehouse does not hold it.

    Its entities are those known by the end of `entities_of` (default: the snapshot's own date):
    first seen in an event by then, catalog entries nobody has interacted with (known at any date),
    or present in the snapshot's triples (attribute values, keywords). An entity only a later build
    registered keeps its id (ids are global, so every embedding table has the same rows) but no
    type: it is no node of this snapshot, whatever order the days were built in. A validation fit passes the final
    cutoff's date, so that items first sold in its window are nodes (catalog items) at V."""
    snapshot_date = snapshot_date or latest_snapshot(conn)
    if snapshot_date is None:
        raise LookupError("no KG snapshot in the warehouse: materialize the knowledge_graph asset first")
    snapshot_params(conn, snapshot_date)  # fails clearly when this snapshot was never built or was pruned
    entities_of = entities_of or snapshot_date
    num_entities = rows(conn, "SELECT coalesce(max(entity_id) + 1, 0) FROM kg.entities")[0][0]
    entities = conn.sql("""
        SELECT entity_id, entity_type FROM kg.entities
        WHERE first_seen < $end OR (first_seen IS NULL AND entity_type IN ('item', 'user')) OR entity_id IN (
            SELECT head_id FROM kg.triples WHERE snapshot_date = $d UNION SELECT tail_id FROM kg.triples
            WHERE snapshot_date = $d)
        ORDER BY entity_id""", params={"end": dt.datetime.combine(entities_of + dt.timedelta(days=1), dt.time()),
                                      "d": entities_of}).to_arrow_table()
    ids = entities.column("entity_id").to_numpy().astype(np.int64)
    type_names, type_codes = np.unique(entities.column("entity_type").to_numpy(zero_copy_only=False).astype(str),
                                       return_inverse=True)
    entity_type = torch.full((num_entities,), -1, dtype=torch.long)
    entity_type[torch.from_numpy(ids)] = torch.from_numpy(type_codes.astype(np.int64))

    relations = rows(conn, "SELECT relation_id, name, head_type, tail_type, source FROM kg.relations ORDER BY relation_id")
    relation_names = [name for _, name, _, _, _ in relations]
    relation_types = [(head, tail) for _, _, head, tail, _ in relations]
    positive = next((name for _, name, _, _, source in relations if source == "positive events"), None)

    triples = conn.sql(
        "SELECT relation_id, head_id, tail_id, weight FROM kg.triples WHERE snapshot_date = $d "
        "ORDER BY relation_id, head_id, tail_id",  # a stable order: edge order decides the training batches
        params={"d": snapshot_date},
    ).to_arrow_table()
    relation = triples.column("relation_id").to_numpy().astype(np.int64)
    heads = torch.from_numpy(triples.column("head_id").to_numpy().astype(np.int64))
    tails = torch.from_numpy(triples.column("tail_id").to_numpy().astype(np.int64))
    weights = torch.from_numpy(triples.column("weight").to_numpy().astype(np.float32))
    bounds = np.searchsorted(relation, np.arange(len(relation_names) + 1))
    edge_index, edge_weight = {}, {}
    for rid, name in enumerate(relation_names):
        lo, hi = int(bounds[rid]), int(bounds[rid + 1])
        edge_index[name] = torch.stack([heads[lo:hi], tails[lo:hi]])
        edge_weight[name] = weights[lo:hi]
    return KnowledgeGraph(snapshot_date, num_entities, entity_type, [str(t) for t in type_names], relation_names,
                          relation_types, edge_index, edge_weight, positive)


def entity_fingerprint(conn: duckdb.DuckDBPyConnection, num_entities: int) -> str:
    """A hash of the first `num_entities` entities (id, type, key): a checkpoint's rows belong to
    this warehouse exactly when the fingerprints agree."""
    return rows(conn, """
        SELECT md5(coalesce(string_agg(entity_id || ':' || entity_type || ':' || natural_key, chr(10)
                                       ORDER BY entity_id), ''))
        FROM kg.entities WHERE entity_id < $n""", {"n": num_entities})[0][0]
