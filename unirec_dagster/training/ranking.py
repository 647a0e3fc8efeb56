"""Fitting the two-stage ranker on the validation window, with everything chosen before the cutoff.

At the validation cutoff V (= C - validation_days) the candidates and features of every validation
user are built from what was known at V (the graph model of the validation fit, the classic peers,
the statistics), and labelled by what the user bought in [V, C). Items first sold inside that
window are catalog items at V (`load_training(catalog_until=C)`), so the ranker also learns where
items nobody has bought yet belong. The ranker's rounds are chosen by cross-validation over these
users, and its validation figure is the out-of-fold ranking of every validation user (a user with
no bought item among the candidates scores zero), comparable with the classic peers' on the same
window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, Field

from unirec_dagster.evaluation.evaluate import slice_metrics, user_figures
from unirec_dagster.evaluation.metrics import KS, paired_bootstrap
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.history import TrainingData
from unirec_dagster.ranking.candidates import CandidateConfig, CutoffInputs
from unirec_dagster.ranking.ranker import (
    NewItemPlacement,
    RankerConfig,
    RankerFit,
    TooFewExamples,
    fit_new_item_placement,
    fit_ranker,
)
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.topk import interleave, new_item_slots
from unirec_dagster.ranking.two_stage import Examples, TwoStage
from unirec_dagster.training.gate import LEVEL, METRIC


class RankingSettings(BaseModel):
    """The two ranking stages: candidate lists, the ranker, and which inputs it may read (the
    switches exist for the ablations that measure what each input is worth)."""

    candidates: CandidateConfig = CandidateConfig()
    ranker: RankerConfig = RankerConfig()
    use_model: bool = Field(True, description="The graph model's candidates and scores are ranker inputs.")
    use_attributes: bool = Field(True, description="KG attribute/keyword overlap with the history is a feature.")
    simulated_new_items: float = Field(
        0.1, ge=0, lt=1, description="Share of the items bought before the validation cutoff whose history is "
        "hidden in a second copy of the ranker's examples (their earlier buyers too), and a new-item placement "
        "model fitted on them (item dropout, as DropoutNet): how the ranker learns where catalog items without "
        "a history belong. 0: off, new items are ranked by what the window's own launches teach (almost "
        "never shown). Costs a second copy of the ranker's examples (BENCHMARKS.md).")
    exclude_unsold: bool = Field(
        False, description="Leave catalog items unsold even by the cutoff out of the ranker's examples. Off: "
        "they are candidates labelled as what happened (not bought in the validation window), as a catalog's "
        "never-sold items are at serving time. On, the window's examples show only new items that do sell in "
        "it, which a catalog file of items that never sell turns into a leak: on the synthetic ratings log the "
        "ranker's validation Recall@20 read 0.29 against 0.14 on the test window, and it ranked unsold items "
        "high. On suits only the strict cold-start protocol, whose hidden items lose their window purchases "
        "too (BENCHMARKS.md).")
    windows: int = Field(
        2, ge=1, le=8, description="Validation windows the ranker learns from: the one before the cutoff and "
        "windows - 1 earlier ones, each `window_step_days` before the last and as long, with features from what "
        "was known at its start (no graph-model features there: the validation fit saw those windows' "
        "purchases). Examples from more users, for a longer fit. 2 was chosen on the out-of-fold validation "
        "Recall@20 of Online Retail's 2011-11-24 and 2011-11-10 nights, 3 seeds each (higher on both; "
        "BENCHMARKS.md); 1 fits the ranker in about half the time.")
    window_step_days: int = Field(7, ge=1, description="Days between the starts of consecutive windows.")
    simulated_trains_ranker: bool = Field(
        True, description="The simulated copy's examples train the ranker as well as the new-item placement. "
        "Off: they train the placement only, and the ranker learns from the users as they are: on Online "
        "Retail the same validation figure for 40% less fitting, but a ranker that never saw items bought "
        "without a history leans on popularity, and where buyers later turn to other items it follows them "
        "less (tests/test_ranking.py's planted shop: 0.69 of the later pairs in the top 10 against 0.91).")
    simulated_repeat_buyers: bool = Field(
        False, description="The simulated copy offers a hidden item to the users who bought it before and "
        "counts buying it again as a pair, as EVALUATION.md's strict protocol did before it changed. Off: as "
        "for a real new item, nobody has bought it before: those users are not offered it, and their window "
        "pairs are the real ones (new to the user in the real data).")
    simulated_users: float = Field(
        0.5, gt=0, le=1, description="Share of the validation users (seeded) seen a second time with the "
        "simulated new items: fewer keeps the nightly run short.")


@dataclass
class TwoStageFit:
    fit: RankerFit
    validation: dict[str, float]              # out-of-fold Recall@20, NDCG@20 of every validation user
    candidate_recall: dict[str, float]        # share of the window's pairs each generator (and all: "total") proposed
    candidates_per_user: float
    examples: int
    users: int
    placement: NewItemPlacement | None = None   # where new items go (with simulated new items and enough of them)
    validation_top: torch.Tensor | None = None  # (users, K) each validation user's out-of-fold list, for the gate
    excluded: torch.Tensor | None = None        # positions left out of the examples (never recommended, unsold by C)


def _labels(examples: Examples, holdout: HoldoutPairs, first_row: int, num_items: int) -> torch.Tensor:
    """(n,) 1 where the example's (user, item) is a pair of the window."""
    ranked = holdout.pair_items >= 0
    wanted = holdout.pair_users[ranked] * num_items + holdout.pair_items[ranked]
    keys = (examples.candidates.rows + first_row) * num_items + examples.candidates.items
    return torch.isin(keys, wanted).float()


def top_by_score(scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, num_users: int,
                 k: int) -> torch.Tensor:
    """(num_users, k) items of each user's k best-scored pairs, -1 where a user has fewer."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]                     # by user, best first
    rows, items = rows[order], items[order]
    counts = torch.bincount(rows, minlength=num_users)
    place = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    top = torch.full((num_users, k), -1, dtype=torch.long)
    keep = place < k
    top[rows[keep], place[keep]] = items[keep]
    return top


def simulate_new_items(inputs: CutoffInputs, share: float, seed: int,
                       embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[CutoffInputs, torch.Tensor]:
    """The inputs at the same cutoff with a seeded random `share` of the bought items turned into
    catalog items nobody has bought (their history hidden from every signal and statistic), and
    those items' positions. `embed` (the hidden items' entity ids -> all embeddings) re-embeds the
    graph model without their interactions (needed when the inputs hold the model's embeddings)."""
    if inputs.embeddings is not None and embed is None:
        raise ValueError("the inputs hold graph-model embeddings: simulating new items needs `embed` to redo them")
    data = inputs.signals.data
    bought = torch.nonzero(data.interacted).flatten() if data.interacted is not None else torch.arange(data.num_items)
    generator = torch.Generator().manual_seed(seed)
    hidden = bought[torch.randperm(len(bought), generator=generator)[:round(share * len(bought))]].sort().values
    signals = Signals(data.without_history(hidden)).with_classic(inputs.signals.classic)
    embeddings = embed(data.items[hidden]) if embed is not None and inputs.embeddings is not None else None
    return CutoffInputs(signals, inputs.stats.without_history(hidden), inputs.content, embeddings), hidden


def hidden_purchases(data: TrainingData, hidden: torch.Tensor) -> torch.Tensor:
    """Keys (user entity id x items + item position) of the purchases before the cutoff of the items
    at `hidden`: in the simulated copy those users are not offered the item again, as nobody has
    bought a real new item before (EVALUATION.md's strict protocol)."""
    is_hidden = torch.zeros(data.num_items, dtype=torch.bool)
    is_hidden[hidden] = True
    mine = is_hidden[data.train_items]
    return (data.train_users[mine] * data.num_items + data.train_items[mine]).unique()


@dataclass
class _ExampleSet:
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    groups: list[np.ndarray] = field(default_factory=list)
    users: list[torch.Tensor] = field(default_factory=list)      # (n,) row of the pair's user in holdout.users
    items: list[torch.Tensor] = field(default_factory=list)
    hits: dict[str, float] = field(default_factory=dict)          # window pairs among each generator's candidates

    def add(self, stage: TwoStage, holdout: HoldoutPairs, left_out: torch.Tensor | None = None) -> _ExampleSet:
        """The examples of `holdout`'s users; `left_out` (user entity id x items + item position) are
        pairs that are not offered (see `hidden_purchases`)."""
        num_items, firsts = stage.inputs.signals.data.num_items, 0
        for examples in stage.examples(holdout.users, withheld=left_out):
            y = _labels(examples, holdout, firsts, num_items)
            for j, g in enumerate(examples.candidates.generators):
                self.hits[g] = self.hits.get(g, 0.0) + float(y[examples.candidates.ranks[:, j] <= stage.config.size(g)].sum())
            self.hits["total"] = self.hits.get("total", 0.0) + float(y.sum())
            self.features.append(examples.features.numpy())
            self.labels.append(y.numpy())
            self.groups.append(examples.group_sizes())
            self.users.append(examples.candidates.rows + firsts)
            self.items.append(examples.candidates.items)
            firsts += len(examples.users)
        return self


NEW_ITEM_EVERY = (0, 20, 10, 5)   # the placements compared on validation (0: by probability alone)


def _placed_top(ranker: np.ndarray, probability: torch.Tensor, new_rows: torch.Tensor, examples: _ExampleSet,
                users: int, every: int, k: int) -> torch.Tensor:
    """(users, k) lists of one copy of the window with new items placed as `every` says."""
    rows_, items_ = torch.cat(examples.users), torch.cat(examples.items)
    slots, main_ranks, new_ranks = new_item_slots(k, every, k)
    if not slots:
        return top_by_score(probability, rows_, items_, users, k)
    main = top_by_score(torch.from_numpy(ranker)[~new_rows], rows_[~new_rows], items_[~new_rows], users, k - slots)
    new = top_by_score(probability[new_rows], rows_[new_rows], items_[new_rows], users, slots)
    return interleave(main, new, main_ranks, new_ranks)


def pick_placement(per_user: dict[int, torch.Tensor], k: int) -> tuple[int, dict[int, float], dict[int, tuple[float, float]]]:
    """(the rule chosen, each rule's mean, each slot rule's interval against ordering by probability)
    from each rule's (users,) Recall@20 (`per_user[0]`: by probability). A slot rule wins only where
    the lower end of its 90% paired bootstrap interval is above zero; of those, the best mean, a tie
    going to fewer slots."""
    figures = {every: float(r.mean()) if len(r) else 0.0 for every, r in per_user.items()}
    intervals = {every: paired_bootstrap(r, per_user[0], LEVEL) for every, r in per_user.items() if every}
    better = [every for every, (low, _) in intervals.items() if low > 0]
    return (max(better, key=lambda e: (round(figures[e], 4), -(k // e))) if better else 0), figures, intervals


def choose_new_item_every(placement: NewItemPlacement, ranker_out_of_fold: np.ndarray, is_new: np.ndarray,
                          first_extra: int, real: _ExampleSet, holdout: HoldoutPairs, inputs: CutoffInputs,
                          extra: _ExampleSet, simulated_holdout: HoldoutPairs, simulated: CutoffInputs,
                          log=None) -> int:
    """Where new items go, chosen on both copies of the validation window, every score out of fold:
    the real copy, whose new items are the window's own launches (items first sold in it, known to
    the catalog: a launch nobody has bought yet), and the simulated copy, where a tenth of the bought
    items lost their history (catalog items of unknown demand). Lists are ordered by purchase
    probability unless forcing the likeliest new items into every n-th rank beats that on Recall@20
    over the users of both copies (each user counted once per copy) by more than noise: the lower
    end of a 90% paired bootstrap interval above zero, as the quality gate asks of the ranker. Of the
    rules that do, the best wins; a tie keeps fewer new items. Choosing by the mean alone picked
    slots on differences of a thousandth (BENCHMARKS.md)."""
    # the placement's out-of-fold scores cover the new rows of both copies, the real copy's first
    assert placement.out_of_fold is not None, "a placement fitted here, not read from a checkpoint"
    probability_ = placement.ranker_probability(ranker_out_of_fold)
    probability_[is_new] = placement.out_of_fold
    probability, new_rows, k = torch.from_numpy(probability_), torch.from_numpy(is_new), max(KS)
    copies = {"real": (real, holdout, inputs, slice(0, first_extra)),
              "simulated": (extra, simulated_holdout, simulated, slice(first_extra, len(is_new)))}
    per_user: dict[int, torch.Tensor] = {}
    per_copy: dict[int, dict[str, float]] = {}
    shown: dict[int, float] = {}
    for every in NEW_ITEM_EVERY:
        per_copy[every], recalls = {}, []
        for name, (examples, pairs, copy_inputs, rows) in copies.items():
            users = len(pairs.users)
            if not users or not examples.users:
                continue
            top = _placed_top(ranker_out_of_fold[rows], probability[rows], new_rows[rows], examples, users, every, k)
            recalls.append(user_figures(top, pairs, copy_inputs.signals.data.num_items)[METRIC])
            per_copy[every][name] = float(recalls[-1].mean())
            if name == "simulated":
                interacted = copy_inputs.signals.data.interacted
                shown[every] = float((~interacted[top[:, :20].clamp(min=0)])[top[:, :20] >= 0].float().mean())
        per_user[every] = torch.cat(recalls) if recalls else torch.zeros(0)
    best, figures, intervals = pick_placement(per_user, k)
    if log:
        log("new-item placement on the validation window, Recall@20 over both copies (real launches; simulated "
            "new items): " + ", ".join(
                f"{'by probability' if e == 0 else f'every {e}th'} {r:.4f} ("
                + ", ".join(f"{name} {v:.4f}" for name, v in per_copy[e].items())
                + (f"; {shown[e]:.1%} new in the simulated lists" if e in shown else "")
                + (f"; against by probability {intervals[e][0]:+.4f}..{intervals[e][1]:+.4f}" if e else "") + ")"
                for e, r in figures.items())
            + f"; chosen: {'by probability' if best == 0 else f'every {best}th rank'}")
    return best


@dataclass
class EarlierWindow:
    """A validation window before the main one: what was known at its start (without the graph
    model, whose validation fit saw this window's purchases), its pairs, and its excluded items."""

    inputs: CutoffInputs
    holdout: HoldoutPairs
    never: torch.Tensor


def _in_columns(features: np.ndarray, names: list[str], wanted: list[str]) -> np.ndarray:
    """`features` (n, len(names)) laid out as `wanted`, NaN in the columns it lacks (LightGBM's missing)."""
    out = np.full((len(features), len(wanted)), np.nan, dtype=features.dtype)
    for j, name in enumerate(names):
        out[:, wanted.index(name)] = features[:, j]
    return out


def fit_two_stage(inputs: CutoffInputs, holdout: HoldoutPairs, config: CandidateConfig = CandidateConfig(),
                  ranker_config: RankerConfig = RankerConfig(), never: torch.Tensor | None = None,
                  log=None, simulated: CutoffInputs | None = None,
                  simulated_holdout: HoldoutPairs | None = None,
                  earlier: list[EarlierWindow] | None = None, simulated_trains_ranker: bool = True,
                  simulated_left_out: torch.Tensor | None = None) -> TwoStageFit:
    """Fit the ranker on `holdout`, the window after inputs' cutoff, for its users. With `simulated`
    (`simulate_new_items` of the same inputs) every user is seen a second time, with some items'
    history hidden: those examples only train; the validation figures are the users as they are.
    `simulated_holdout` labels the second copy (some or all of the same users, their pairs counted as
    if the hidden items' history were unknown); `holdout` by default. `earlier` windows add training
    examples (their graph-model columns missing); a user keeps one fold across every window, so the
    out-of-fold validation figures stay honest. Without `simulated_trains_ranker` the simulated copy
    trains the new-item placement only; the ranker scores it out of fold for the placement's choice.
    `simulated_left_out`: pairs the simulated copy does not offer (`hidden_purchases`)."""
    if not len(holdout.users):
        raise TooFewExamples(f"no validation users after {inputs.signals.data.cutoff}: nothing to fit a ranker on")
    stage = TwoStage(inputs, config, never=never)
    real = _ExampleSet().add(stage, holdout)
    # The simulated copy shows only the simulated items as new: the items first sold inside the window
    # are new in the real copy already, and there they stand for a shop's launches, not for catalog
    # items of unknown demand (which the placement and its choice of slots are about).
    launches = inputs.new_items if never is None else torch.cat([never, inputs.new_items])
    simulated_holdout = simulated_holdout if simulated_holdout is not None else holdout
    # rows of the simulated copy's users among the real copy's (a user's two copies share a fold)
    simulated_rows = torch.searchsorted(holdout.users, simulated_holdout.users).clamp(max=max(len(holdout.users) - 1, 0))
    if not torch.equal(holdout.users[simulated_rows], simulated_holdout.users):
        raise ValueError("the simulated copy's window must hold users of the real one")
    extra = (_ExampleSet().add(TwoStage(simulated, config, never=launches), simulated_holdout, simulated_left_out)
             if simulated is not None else _ExampleSet())
    labels_ = np.concatenate(real.labels)
    pairs = max(len(holdout.pair_items), 1)
    hits = real.hits
    if log:
        log(f"ranker examples at {inputs.signals.data.cutoff}: {len(holdout.users):,} users, {len(labels_):,} "
            f"candidates ({len(labels_) / max(len(holdout.users), 1):.0f} per user), holding "
            f"{hits.get('total', 0) / pairs:.1%} of the window's {pairs:,} pairs"
            + (f"; with simulated new items {len(simulated_holdout.users):,} of them again, holding "
               f"{extra.hits.get('total', 0) / max(len(simulated_holdout.pair_items), 1):.1%} of their "
               f"{len(simulated_holdout.pair_items):,} pairs" if simulated is not None else ""))
    # Group keys are user entity ids: a user's groups (as is, simulated, earlier windows) share a fold.
    group_keys = [holdout.users.numpy()] + ([simulated_holdout.users.numpy()] if simulated is not None else [])
    before = _ExampleSet()
    for window in earlier or []:
        stage_j = TwoStage(window.inputs, config, never=window.never)
        added = len(before.labels)
        before.add(stage_j, window.holdout)
        before.features[added:] = [_in_columns(f, stage_j.feature_names, stage.feature_names)
                                   for f in before.features[added:]]
        group_keys.append(window.holdout.users.numpy())
        if log:
            found = sum(float(y.sum()) for y in before.labels[added:])
            log(f"earlier window at {window.inputs.signals.data.cutoff}: {len(window.holdout.users):,} users, "
                f"{sum(len(y) for y in before.labels[added:]):,} candidates holding {found:,.0f} of its "
                f"{len(window.holdout.pair_items):,} pairs")
    mine = len(labels_) + sum(len(y) for y in extra.labels)    # the main window's rows (as is and simulated)
    all_features = np.concatenate(real.features + extra.features + before.features)
    all_labels = np.concatenate(real.labels + extra.labels + before.labels)
    trains = ([np.ones(len(g), dtype=bool) for g in real.groups]
              + [np.full(len(g), simulated_trains_ranker) for g in extra.groups]
              + [np.ones(len(g), dtype=bool) for g in before.groups])
    fit = fit_ranker(all_features, all_labels, np.concatenate(real.groups + extra.groups + before.groups),
                     stage.feature_names, ranker_config, log=log, group_keys=np.concatenate(group_keys),
                     train_groups=np.concatenate(trains))
    placement = None
    if simulated is not None:
        all_features, all_labels = all_features[:mine], all_labels[:mine]
        is_new = all_features[:, stage.feature_names.index("item_is_new")] > 0
        user_keys = torch.cat(real.users + [simulated_rows[rows] for rows in extra.users]).numpy()
        placement = fit_new_item_placement(all_features[is_new], all_labels[is_new], user_keys[is_new],
                                           stage.feature_names, fit.out_of_fold[:len(labels_)], labels_,
                                           ranker_config, log=log)
        if placement is not None:
            placement.every = choose_new_item_every(placement, fit.out_of_fold[:mine], is_new, len(labels_), real,
                                                    holdout, inputs, extra, simulated_holdout, simulated, log=log)
    top = top_by_score(torch.from_numpy(fit.out_of_fold[:len(labels_)]), torch.cat(real.users), torch.cat(real.items),
                       len(holdout.users), max(KS))
    validation = slice_metrics(top, holdout, inputs.signals.data, slices=False)[0].metrics
    if log:
        log(f"ranker: {fit.ranker.rounds} rounds, out-of-fold validation Recall@20 {validation['recall@20']:.4f}, "
            f"NDCG@20 {validation['ndcg@20']:.4f}")
    return TwoStageFit(fit, {"recall@20": validation["recall@20"], "ndcg@20": validation["ndcg@20"]},
                       {g: round(v / pairs, 4) for g, v in hits.items()}, len(labels_) / max(len(holdout.users), 1),
                       len(labels_), len(holdout.users), placement, top, never)
