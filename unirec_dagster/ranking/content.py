"""What an item is, apart from who bought it: its text vector and its attribute values and keywords
in the KG. Two user-item signals come from them, and they place items nobody has bought yet:

- text similarity: cosine of the item's text vector to the mean text vector of the user's past
  items (EVALUATION.md's content baseline);
- attribute overlap: how often the item's attribute values and keywords occur among the user's
  past items (the attribute-popularity baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unirec_dagster.graph import KnowledgeGraph

GENERIC_RELATIONS = {"item_co_occurs"}  # item -> item: a basket, not a property of the item


class ItemContent:
    """Text vectors (I, d), unit length, zero for items without text, and the (I, values) sparse
    incidence of attribute values and keywords, over candidate positions of `items` (entity ids)."""

    def __init__(self, items: torch.Tensor, text_ids: torch.Tensor | None = None,
                 text_vectors: torch.Tensor | None = None, graph: KnowledgeGraph | None = None):
        self.num_items = len(items)
        size = int(max(items.max() if len(items) else 0, text_ids.max() if text_ids is not None and len(text_ids)
                       else 0, graph.num_entities - 1 if graph is not None else 0)) + 1
        position = torch.full((size,), -1, dtype=torch.long)
        position[items] = torch.arange(len(items))
        self.text = None
        if text_ids is not None and text_vectors is not None and len(text_ids):
            self.text = torch.zeros(len(items), text_vectors.shape[1])
            placed = position[text_ids] >= 0
            self.text[position[text_ids[placed]]] = F.normalize(text_vectors[placed].float(), dim=-1)
        self.incidence = None
        if graph is not None:
            heads, tails = graph.item_value_edges(GENERIC_RELATIONS)
            keep = position[heads] >= 0
            values, column = torch.unique(tails[keep], return_inverse=True)
            self.incidence = torch.sparse_coo_tensor(
                torch.stack([position[heads[keep]], column]), torch.ones(int(keep.sum())),
                (len(items), len(values)), check_invariants=False).coalesce().to_sparse_csr()

    def text_similarity(self, history: torch.Tensor) -> torch.Tensor:
        """(users, I) cosine of each item's text to the user's mean past text; `history` is (users, I)
        sparse. Zero without a text view."""
        if self.text is None:
            return torch.zeros(history.shape[0], self.num_items)
        profile = F.normalize(torch.sparse.mm(history, self.text), dim=-1)               # (users, d)
        return profile @ self.text.T

    def attribute_overlap(self, history: torch.Tensor) -> torch.Tensor:
        """(users, I): occurrences of each item's attribute values and keywords among the user's past items."""
        if self.incidence is None:
            return torch.zeros(history.shape[0], self.num_items)
        profile = (history.to_sparse_csr() @ self.incidence).to_dense()                  # (users, values)
        return (self.incidence @ profile.T).T
