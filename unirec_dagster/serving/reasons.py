"""Reasons a person understands: every personalised recommendation names its anchor, the user's own
past item it is most tied to, and a shared attribute or keyword when there is one.

- co-purchase led: "bought together with <past item>", the past item with the highest co-purchase
  similarity to the recommendation; EASE^R or RP3beta led (item-item models of the same baskets):
  "shoppers who bought <past item> bought it", anchored the same way (in the dataset's words: the
  spec's `events.verbs`, "people who picked ... picked it" by default);
- model led: "because you bought <past item>", the past item nearest in the model's space;
- an item nobody has interacted with yet: "new in the catalog, like <past item>" (the model places
  it through its text and attributes);
- popularity led: "popular recently", "a best seller", "trending: ..." (no anchor);
- with the two-stage ranker, the lead is the candidate generator that ranked the item best;
- "(also <value>)": an attribute value or keyword the item shares with the anchor.

Templates hold `{anchor}` and `{value}`, filled with the entities' display names when the rows are
written, so the scoring loop handles ids only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unirec_dagster.datasets import VerbsSpec
from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.ranking.signals import Signals

# {verb} and {people} are the dataset's words (`events.verbs` of the spec): "bought", "shoppers" for a shop.
POSITIVE = {"model": "because you {verb} {anchor}", "co_purchase": "{verb} together with {anchor}",
            "ease": "{people} who {verb} {anchor} {verb} it", "rp3beta": "{people} who {verb} {anchor} {verb} it",
            "recent_popularity": "popular recently", "popularity": "a favourite of many {people}",
            "trending": "trending: many new {people} lately", "new_items": "new in the catalog",
            "buyers_7": "popular this week", "buyers_30": "popular this month", "buyers_90": "popular this season",
            "segment_popularity": "popular among {people} like you"}
# A learned blend may weigh a signal negatively (all-time popularity, against recent popularity:
# trending); an item then gains from being low on it.
NEGATIVE = {"model": "outside your usual items", "co_purchase": "something different from your past items",
            "recent_popularity": "not yet widely {verb} lately", "popularity": "trending: rising, not yet a favourite"}
PLAIN = "similar {people} {verb} it"   # an anchored lead without an anchor
NEW_ITEM = "new in the catalog, like {anchor}"
SHARED = " (also {value})"
ANCHORED = {"model", "co_purchase", "ease", "rp3beta"}
BASKET_LED = {"co_purchase", "ease", "rp3beta"}   # anchored by co-purchase similarity
GENERIC_RELATIONS = {"item_co_occurs", "item_price_band"}  # a shared price band or basket is no reason
HISTORY = 20          # the user's most recent purchases an anchor is chosen from
MAX_VALUES = 12       # attribute values and keywords per item considered for "(also ...)"


class Explainer:
    """Anchors and shared values for top-K lists over the candidates of `signals`, block by block;
    `embeddings` (the graph model's) anchor model-led items, `graph` names shared values."""

    def __init__(self, signals: Signals, embeddings: torch.Tensor | None = None, graph: KnowledgeGraph | None = None,
                 verbs: VerbsSpec = VerbsSpec()):
        self.signals = signals
        self.verbs = verbs
        data = signals.data
        self.templates: list[str] = []
        self._template_id: dict[str, int] = {}
        # The most recent purchases of every user with history, (users, HISTORY) positions, -1 pad.
        order = torch.argsort(data.train_users * 1e7 + data.train_last_days.double(), stable=True)
        users, items = data.train_users[order], data.train_items[order]
        self.user_ids, counts = torch.unique_consecutive(users, return_counts=True)
        rank = torch.arange(len(users)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        keep = rank < HISTORY
        self.history = torch.full((len(self.user_ids), HISTORY), -1, dtype=torch.long)
        self.history[torch.repeat_interleave(torch.arange(len(self.user_ids)), counts)[keep], rank[keep]] = items[keep]
        self.vectors = (F.normalize(embeddings[data.items.to(embeddings.device)].float(), dim=-1).cpu()
                        if embeddings is not None else None)
        self.values = self._item_values(graph, data.items) if graph is not None else None

    def _item_values(self, graph: KnowledgeGraph, items: torch.Tensor) -> torch.Tensor:
        """(items, MAX_VALUES) entity ids of each candidate's attribute values then keywords, -1 pad."""
        position = torch.full((graph.num_entities,), -1, dtype=torch.long)
        position[items] = torch.arange(len(items))
        heads, tails = graph.item_value_edges(GENERIC_RELATIONS)
        keep = position[heads] >= 0
        heads, tails = position[heads[keep]], tails[keep]
        order = torch.argsort(heads, stable=True)
        heads, tails = heads[order], tails[order]
        counts = torch.bincount(heads, minlength=len(items))
        rank = torch.arange(len(heads)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        values = torch.full((len(items), MAX_VALUES), -1, dtype=torch.long)
        keep = rank < MAX_VALUES
        values[heads[keep], rank[keep]] = tails[keep]
        return values

    def words(self, text: str) -> str:
        """A template in the dataset's words (its {anchor} and {value} stay to be filled)."""
        return text.replace("{verb}", self.verbs.positive).replace("{people}", self.verbs.person)

    def template(self, text: str) -> int:
        text = self.words(text)
        if text not in self._template_id:
            self._template_id[text] = len(self.templates)
            self.templates.append(text)
        return self._template_id[text]

    def _co_purchase(self, anchors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Co-purchase similarity of anchor position -> item position, elementwise (0 where none or pad)."""
        return self.signals.co_purchase(anchors.clamp(min=0), items).masked_fill(anchors < 0, 0.0)

    def explain(self, users: torch.Tensor, top: torch.Tensor, lead: torch.Tensor,
                lead_names: list[str], weights: dict[str, float] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(template ids, anchor positions or -1, shared value entity ids or -1), each like `top`
        (n, k) candidate positions; `lead` indexes `lead_names`, the signal that led each item, with
        its blend weight in `weights` (a negative one reads the other way; default: all positive).
        Anchors are looked for only where a reason names one."""
        data = self.signals.data
        weights = weights if weights is not None else dict.fromkeys(lead_names, 1.0)
        at = torch.searchsorted(self.user_ids, users).clamp(max=max(len(self.user_ids) - 1, 0))
        known = (self.user_ids[at] == users) if len(self.user_ids) else torch.zeros(len(users), dtype=torch.bool)
        new = ~data.interacted[top]
        led_by = {name: lead == i for i, name in enumerate(lead_names)}
        by_co = torch.zeros_like(new)
        for name in BASKET_LED:
            by_co |= led_by.get(name, torch.zeros_like(new)) & (weights.get(name, 0) > 0)
        by_model = led_by.get("model", torch.zeros_like(new)) & (weights.get("model", 0) > 0)
        rows, cols = torch.nonzero((by_co | by_model | new) & known.unsqueeze(1), as_tuple=True)

        anchor = torch.full_like(top, -1)
        if len(rows):
            history = self.history[at[rows]]                                        # (m, H), -1 padded
            items = top[rows, cols]                                                 # (m,)
            co = torch.zeros(history.shape)                                         # (m, H)
            wanted = by_co[rows, cols] if self.vectors is not None else torch.ones(len(rows), dtype=torch.bool)
            co[wanted] = self._co_purchase(history[wanted], items[wanted].unsqueeze(1).expand(-1, HISTORY))
            if self.vectors is not None:
                # per user, not per (user, item): (n, k, d) x (n, d, H), then the rows needed
                past = self.vectors[self.history[at].clamp(min=0)]                   # (n, H, d)
                near = torch.bmm(self.vectors[top], past.transpose(1, 2))[rows, cols]  # (m, H)
            else:
                near = co.clone()
            near = near.masked_fill(history < 0, float("-inf"))
            use_co = by_co[rows, cols] & (co.max(1).values > 0) & ~new[rows, cols]
            chosen = torch.where(use_co, co.argmax(1), near.argmax(1))
            found = (history >= 0).any(1) & (use_co | ~by_co[rows, cols] | new[rows, cols])
            anchor[rows[found], cols[found]] = history[found, chosen[found]]

        shared = torch.full_like(top, -1)
        if self.values is not None:
            r, c = torch.nonzero(anchor >= 0, as_tuple=True)
            mine, theirs = self.values[top[r, c]], self.values[anchor[r, c]]        # (p, V)
            match = (mine.unsqueeze(2) == theirs.unsqueeze(1)).any(2) & (mine >= 0)
            first = torch.gather(mine, 1, match.float().argmax(1, keepdim=True)).squeeze(1)
            shared[r, c] = torch.where(match.any(1), first, -1)

        codes = torch.empty_like(top)
        for i, name in enumerate(lead_names):
            weight = weights[name]
            text = (POSITIVE if weight >= 0 else NEGATIVE)[name]
            mask = lead == i
            codes[mask] = self.template(text)
            if name in ANCHORED and weight >= 0:
                # a model- or co-purchase-led item with no anchor keeps a plain reason
                codes[mask & (anchor < 0)] = self.template(PLAIN)
                codes[mask & (anchor >= 0) & (shared >= 0)] = self.template(text + SHARED)
        codes[new & (anchor >= 0)] = self.template(NEW_ITEM)
        codes[new & (anchor >= 0) & (shared >= 0)] = self.template(NEW_ITEM + SHARED)
        return codes, anchor, shared
