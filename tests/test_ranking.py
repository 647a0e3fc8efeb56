"""The ranking stages on planted data: EASE^R against its closed form, and a ranker that must learn
from a feature the logit blend cannot use."""

import datetime as dt

import lightgbm as lgb
import numpy as np
import torch

from unirec_dagster.evaluation.evaluate import evaluate, slice_metrics
from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.history import CutoffStats, TrainingData
from unirec_dagster.ranking import signals as signals_module
from unirec_dagster.ranking.baselines import MOST_POPULAR, RECENT_POPULAR
from unirec_dagster.ranking.candidates import CandidateConfig, CutoffInputs, _first_allowed
from unirec_dagster.ranking.classic import ease_weights
from unirec_dagster.ranking.content import ItemContent
from unirec_dagster.ranking.ranker import SMALL_DATA, CompiledTrees, Ranker, RankerConfig
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.topk import new_item_slots, top_places
from unirec_dagster.ranking.two_stage import TwoStage
from unirec_dagster.training.blend import fit_blend
from unirec_dagster.training.classic import tune_classic
from unirec_dagster.training.gate import judge_on_validation
from unirec_dagster.training.ranking import (
    EarlierWindow,
    _ExampleSet,
    _in_columns,
    fit_two_stage,
    hidden_purchases,
    pick_placement,
    simulate_new_items,
)

NUM_USERS, NUM_ITEMS, FIRST_ITEM = 400, 60, 1000
UNSOLD = 15  # catalog items nobody buys before or in the window (the simulated new items test)


def test_ease_matches_its_closed_form():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(30, 12, generator=g) < 0.3).float()
    lam = 5.0
    p = torch.linalg.inv(x.T @ x + lam * torch.eye(12))
    expected = -p / torch.diag(p)
    expected.fill_diagonal_(0)
    rows, cols = torch.nonzero(x, as_tuple=True)
    history = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(len(rows)), x.shape,
                                      check_invariants=False).coalesce()
    columns, weights = ease_weights(history, x.sum(0), lam)
    assert torch.equal(columns, torch.arange(12)) and torch.allclose(weights, expected, atol=1e-4)
    # A catalog above the cap is fitted on its most-bought items: the closed form over those columns.
    top = torch.topk(x.sum(0), 5).indices.sort().values
    capped_columns, capped = ease_weights(history, x.sum(0), lam, max_items=5)
    sub = x[:, top]
    p = torch.linalg.inv(sub.T @ sub + lam * torch.eye(5))
    expected = -p / torch.diag(p)
    expected.fill_diagonal_(0)
    assert torch.equal(capped_columns, top) and torch.allclose(capped, expected, atol=1e-4)


def test_compiled_trees_predict_what_lightgbm_predicts(monkeypatch):
    """lleaves' native code gives the booster's own scores, for the ranker (raw scores) and the new-item
    placement (probabilities), on float32 features on a coarse grid (values sit next to thresholds),
    converted chunk by chunk."""
    rng = np.random.default_rng(0)
    features = (rng.integers(0, 20, size=(3_000, 6)) / 10).astype(np.float32)
    labels = (features[:, 0] * features[:, 1] + rng.normal(size=3_000) > 1).astype(float)
    monkeypatch.setattr(CompiledTrees, "ROWS", 1_000)
    for objective, group in (("lambdarank", [30] * 100), ("binary", None)):
        booster = lgb.train({"objective": objective, "num_leaves": 7, "verbosity": -1, "num_threads": 1},
                            lgb.Dataset(features, labels, group=group), num_boost_round=40)
        compiled = CompiledTrees(booster, threads=2).predict(features)
        assert np.abs(compiled - booster.predict(features)).max() < 1e-9, objective
    assert len(CompiledTrees(booster).predict(features[:0])) == 0


def test_dense_and_sparse_item_weights_give_the_same_scores(monkeypatch):
    """Small catalogs score through dense item x item weights, large ones through sparse: same numbers."""
    inputs, _ = planted_shop()
    data, users = inputs.signals.data, torch.arange(0, NUM_USERS, 3)
    anchors, items = torch.randint(0, NUM_ITEMS, (2, 500), generator=torch.Generator().manual_seed(1))
    dense = Signals(data)   # the weights are made on first use: use them before the cap changes
    scored = dense.rp3beta_scores(users), dense.knn_scores(users), dense.co_purchase(anchors, items)
    monkeypatch.setattr(signals_module, "DENSE_CELLS", 0)
    sparse = Signals(data)
    again = sparse.rp3beta_scores(users), sparse.knn_scores(users), sparse.co_purchase(anchors, items)
    assert dense._similarity.layout == torch.strided and sparse._similarity.layout == torch.sparse_csr
    assert sparse._rp3beta.layout == torch.sparse_csr
    assert all(torch.equal(a, b) for a, b in zip(scored, again)) and (scored[2] > 0).any()


def planted_shop(seed: int = 0, unsold: int = 0):
    """Users with three random past purchases each; in the window every user buys the two items whose
    price is nearest their usual price: a preference no popularity, co-purchase or EASE^R signal
    carries, and which is not monotone in any one feature (nearest, not cheapest). The first `unsold`
    items are catalog items nobody has bought, before or in the window."""
    g = torch.Generator().manual_seed(seed)
    past = torch.stack([torch.randperm(NUM_ITEMS - unsold, generator=g)[:3] + unsold for _ in range(NUM_USERS)])
    users = torch.arange(NUM_USERS).repeat_interleave(3)
    items = past.reshape(-1)
    popularity = torch.bincount(items, minlength=NUM_ITEMS).float()
    data = TrainingData(dt.date(2024, 1, 1), torch.arange(FIRST_ITEM, FIRST_ITEM + NUM_ITEMS), users, items,
                        torch.rand(len(users), generator=g) * 30, torch.ones(len(users), dtype=torch.long),
                        popularity, popularity, popularity, torch.arange(NUM_ITEMS) >= unsold)
    item_price = torch.linspace(1.0, 60.0, NUM_ITEMS)[torch.randperm(NUM_ITEMS, generator=g)]
    user_price = item_price[torch.randint(0, NUM_ITEMS, (NUM_USERS,), generator=g)] * 1.02
    zeros, ones = torch.zeros(NUM_ITEMS), torch.ones(NUM_USERS)
    age = torch.where(data.interacted, 100.0, float("nan"))
    stats = CutoffStats(
        data.cutoff,
        {"buyers_all": popularity, "buyers_7": popularity, "buyers_30": popularity, "buyers_90": popularity,
         "adopters": zeros, "age_days": age, "since_sale_days": age / 100, "price": item_price,
         "buyers_year_ago": zeros},
        torch.arange(NUM_USERS),
        {"last_days": ones, "first_days": ones * 30, "positives": ones * 3, "baskets": ones, "distinct_items": ones * 3,
         "price": user_price},
        torch.zeros(NUM_USERS, dtype=torch.long), torch.zeros(1, NUM_ITEMS), [])
    inputs = CutoffInputs(Signals(data), stats, ItemContent(data.items))
    return inputs, nearest_priced(inputs, data.interacted)


def nearest_priced(inputs: CutoffInputs, allowed: torch.Tensor) -> torch.Tensor:
    """(users, 2): each user's two `allowed` items nearest their usual price, past purchases excepted."""
    stats, data = inputs.stats, inputs.signals.data
    gap = (torch.log(stats.items["price"]).unsqueeze(0) - torch.log(stats.users["price"]).unsqueeze(1)).abs()
    gap[data.train_users, data.train_items] = float("inf")            # nobody buys the same item again
    gap[:, ~allowed] = float("inf")
    return torch.topk(-gap, 2, dim=1).indices


def holdout_of(users: torch.Tensor, bought: torch.Tensor) -> HoldoutPairs:
    pair_users = torch.arange(len(users)).repeat_interleave(2)
    return HoldoutPairs(users, pair_users, bought[users].reshape(-1), torch.full((len(users),), 2),
                        torch.zeros(len(pair_users), dtype=torch.bool))


def test_ranker_learns_a_preference_the_blend_cannot_use():
    inputs, bought = planted_shop()
    fit_users, new_users = torch.arange(0, 250), torch.arange(250, NUM_USERS)
    config = CandidateConfig(model=0, ease=NUM_ITEMS, rp3beta=0, co_purchase=0, trending=0, new_items=0)
    ranker_config = RankerConfig(folds=3, min_data_in_leaf=10, max_rounds=150, patience=20, threads=1)
    fitted = fit_two_stage(inputs, holdout_of(fit_users, bought), config, ranker_config)
    assert fitted.candidate_recall["total"] == 1.0, "every item is a candidate"
    assert fitted.validation["recall@20"] > 0.9, fitted.validation          # out of fold, on the fit users

    # Users the ranker never saw: it ranks by the planted preference; the blend cannot.
    held_out = holdout_of(new_users, bought)
    stage = TwoStage(inputs, config, fitted.fit.ranker)
    top = torch.cat([block.items for block in stage.top_k(new_users, 20)])
    ranker = slice_metrics(top, held_out, inputs.signals.data, slices=False)[0].metrics["recall@20"]
    blend = Scorer(inputs.signals, fit_blend(Scorer(inputs.signals, {}), holdout_of(fit_users, bought)))
    blended = evaluate(blend, held_out, slices=False)[0].metrics["recall@20"]
    assert ranker > 0.9 and blended < 0.6, (ranker, blended)
    assert next(iter(fitted.fit.ranker.importances())) == "price_gap"

    # Saved as text and read back, it ranks the same; refitting with the same seed gives the same model.
    again = Ranker.from_text(fitted.fit.ranker.to_text(), fitted.fit.ranker.rounds, fitted.fit.ranker.cv_ndcg)
    reread = torch.cat([b.items for b in TwoStage(inputs, config, again).top_k(new_users, 20)])
    assert torch.equal(reread, top)
    refit = fit_two_stage(inputs, holdout_of(fit_users, bought), config, ranker_config)
    assert refit.fit.ranker.to_text() == fitted.fit.ranker.to_text()


def shop_with_unsold_items(unsold: int = 6) -> tuple[CutoffInputs, torch.Tensor, torch.Tensor]:
    """The planted shop whose first `unsold` items nobody has bought: (inputs, bought, interacted)."""
    inputs, bought = planted_shop()
    interacted = torch.ones(NUM_ITEMS, dtype=torch.bool)
    interacted[:unsold] = False
    data = inputs.signals.data
    without = TrainingData(data.cutoff, data.items, data.train_users, data.train_items, data.train_last_days,
                           data.train_counts, data.popularity, data.recent_popularity, data.positive_counts, interacted)
    return CutoffInputs(Signals(without), inputs.stats, inputs.content), bought, interacted


def test_new_item_every_puts_unsold_items_into_their_slots():
    inputs, bought, interacted = shop_with_unsold_items()
    config = CandidateConfig(model=0, ease=30, rp3beta=0, co_purchase=0, trending=0, new_items=6)
    fitted = fit_two_stage(inputs, holdout_of(torch.arange(0, 250), bought), config,
                           RankerConfig(folds=3, min_data_in_leaf=10, max_rounds=30, patience=10, threads=1))
    stage, users = TwoStage(inputs, config, fitted.fit.ranker), torch.arange(250, NUM_USERS)
    forced = torch.cat([block.items for block in stage.top_k(users, 20, new_item_every=5)])
    is_new = ~interacted[forced]
    others = [r for r in range(20) if r not in (4, 9, 14, 19)]
    assert is_new[:, [4, 9, 14, 19]].all() and not is_new[:, others].any()


def test_the_top_k_over_candidates_is_the_top_k_over_the_catalog():
    """Serving takes each user's top K over their candidates only; a user with fewer candidates than
    the list needs is ranked over the catalog. Both give what ranking every item would: candidates
    by the ranker, the rest below them by recent popularity, with and without new-item slots."""
    inputs, bought, _ = shop_with_unsold_items()
    config = CandidateConfig(model=0, ease=25, rp3beta=0, co_purchase=10, trending=5, new_items=6)
    fitted = fit_two_stage(inputs, holdout_of(torch.arange(0, 250), bought), config,
                           RankerConfig(folds=3, min_data_in_leaf=10, max_rounds=30, patience=10, threads=1))
    stage, users = TwoStage(inputs, config, fitted.fit.ranker), torch.arange(250, NUM_USERS)
    counts = torch.cat([torch.bincount(e.candidates.rows, minlength=len(e.users)) for e in stage.examples(users)])
    assert (counts >= 20).all() and (counts < 30).any() and (counts >= 30).any()   # both ways are taken at k = 30
    for k, every in ((20, 0), (30, 0), (20, 5), (30, 4)):
        served = list(stage.top_k(users, k, new_item_every=every))
        slots, main_ranks, new_ranks = new_item_slots(k, every, 6)
        for block, examples in zip(served, stage.examples(users, dtype=torch.float64)):
            predicted = stage.predict(examples)
            lead = examples.candidates.lead({g: config.size(g) for g in examples.candidates.generators})
            every_row = torch.arange(len(examples.users))
            values, items, leads = stage._over_catalog(examples, every_row, predicted, lead, k,
                                                       inputs.new_items, slots, main_ranks, new_ranks)
            assert torch.equal(block.scores, values), (k, every)
            # Tied scores (items whose features are the same here) may come in either order: within
            # each part of a list (the new-item slots, the other ranks) the items above the part's
            # lowest score are the same, and an item whose score no other has sits at the same rank.
            for part in (main_ranks, new_ranks) if slots else (torch.arange(k),):
                for row in range(len(items)):
                    mine, theirs = block.scores[row, part], block.items[row, part]
                    above = mine > mine.min()
                    assert set(theirs[above].tolist()) == set(items[row, part][above].tolist()), (k, every, row)
                    which = mine.unique(return_inverse=True)[1]
                    alone = (torch.bincount(which) == 1)[which] & above
                    assert torch.equal(theirs[alone], items[row, part][alone])
                    assert torch.equal(block.lead[row, part][alone], leads[row, part][alone])


def test_the_trending_list_is_each_users_top_k_of_the_shared_order():
    g = torch.Generator().manual_seed(0)
    trending = torch.randn(500, generator=g)
    trending[::7] = float("-inf")                                       # items nobody may see as trending
    excluded = torch.rand(300, 500, generator=g) < 0.3
    excluded[0] = True                                                  # a user who bought everything
    order = torch.argsort(trending, descending=True)
    listed = _first_allowed(order[torch.isfinite(trending[order])], excluded, 100)
    top = torch.topk(trending.expand(300, -1).masked_fill(excluded, float("-inf")), 100, dim=1)
    assert torch.equal(listed, torch.where(torch.isfinite(top.values), top.indices, -1))
    assert (listed[0] == -1).all()


def test_the_top_k_on_integer_keys_is_the_top_k_of_the_floats():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 300, generator=g) * torch.logspace(-30, 30, 300)   # tiny and huge, both signs
    scores[torch.rand(200, 300, generator=g) < 0.2] = float("-inf")             # excluded items
    scores[:, :5] = 0.0
    scores[0] = float("-inf")                                                    # a user who may be offered nothing
    scores[1, 1:] = float("-inf")                                                # and one with a single item
    top = torch.topk(scores, 50, dim=1)
    places = top_places(scores, 50)
    listed = torch.isfinite(top.values)
    assert torch.equal(places >= 0, listed)
    assert torch.equal(scores.gather(1, places.clamp(min=0))[listed], top.values[listed])   # the same values, in order
    assert (places[0] == -1).all() and places[1, 0] == 0 and (places[1, 1:] == -1).all()


def test_simulated_new_items_teach_the_ranker_where_unsold_items_belong():
    """In the window users buy the nearest-priced of the more popular half of the items; catalog
    items nobody has bought are never bought there. From the window alone the ranker learns that an
    item without buyers is not bought. With a share of the bought items' history hidden (item
    dropout), a placement model learns to place such an item by what is known of it (its price)."""
    inputs, _ = planted_shop(unsold=UNSOLD)
    popularity = inputs.signals.data.popularity
    bought = nearest_priced(inputs, popularity >= popularity.median())
    simulated, hidden = simulate_new_items(inputs, 0.3, seed=0)
    data, seen = simulated.signals.data, inputs.signals.data
    assert len(hidden) == round(0.3 * (NUM_ITEMS - UNSOLD))
    assert seen.interacted[hidden].all() and not data.interacted[hidden].any()
    assert not torch.isin(data.train_items, hidden).any() and (data.popularity[hidden] == 0).all()
    assert (simulated.stats.items["buyers_all"][hidden] == 0).all() and simulated.stats.items["age_days"][hidden].isnan().all()
    assert torch.equal(simulated.stats.items["price"], inputs.stats.items["price"])

    fit_users, later_users = torch.arange(0, 250), torch.arange(250, NUM_USERS)
    config = CandidateConfig(model=0, ease=NUM_ITEMS, rp3beta=0, co_purchase=0, trending=0, new_items=NUM_ITEMS)
    ranker_config = RankerConfig(folds=3, min_data_in_leaf=10, max_rounds=150, patience=20, threads=1)
    plain = fit_two_stage(inputs, holdout_of(fit_users, bought), config, ranker_config)
    taught = fit_two_stage(inputs, holdout_of(fit_users, bought), config, ranker_config, simulated=simulated)
    assert taught.users == plain.users == 250 and taught.validation["recall@20"] > 0.9

    # Later the unsold items sell like any other: users buy the nearest-priced items of the whole catalog.
    later = nearest_priced(inputs, torch.ones(NUM_ITEMS, dtype=torch.bool))[later_users]
    unsold_pairs = later < UNSOLD

    def unsold_hits(fit) -> float:
        top = torch.cat([b.items for b in TwoStage(inputs, config, fit.fit.ranker).top_k(later_users, 10)])
        found = (top.unsqueeze(1) == later.unsqueeze(2)).any(2)                 # (users, 2)
        return float(found[unsold_pairs].float().mean())

    assert unsold_pairs.sum() >= 20
    taught_hits, plain_hits = unsold_hits(taught), unsold_hits(plain)
    assert taught.placement is not None and plain.placement is None
    # The plain ranker puts them below every popular item near the user's price, so where it leaves
    # them depends on how many of those there are (0.2..0.8 of the pairs in the top 10 over planted
    # seeds 0-3); the taught one, by their price alone (0.89..1.0 over the same seeds).
    assert taught_hits > 0.85 and taught_hits - plain_hits > 0.15, (taught_hits, plain_hits)


def test_the_simulated_copy_offers_no_hidden_item_to_its_earlier_buyers():
    """A real new item has no earlier buyers (EVALUATION.md): in the simulated copy a hidden item
    is offered to everyone except the users who bought it before the cutoff."""
    inputs, bought = planted_shop()
    simulated, hidden = simulate_new_items(inputs, 0.3, seed=0)
    data = inputs.signals.data
    left_out = hidden_purchases(data, hidden)
    was_hidden = torch.isin(data.train_items, hidden)
    assert len(left_out) == len(torch.unique(data.train_users[was_hidden] * NUM_ITEMS + data.train_items[was_hidden]))
    config = CandidateConfig(model=0, ease=NUM_ITEMS, rp3beta=0, co_purchase=0, trending=0, new_items=NUM_ITEMS)
    users = torch.arange(0, 250)
    stage = TwoStage(simulated, config)

    def offered(examples: _ExampleSet) -> torch.Tensor:
        return users[torch.cat(examples.users)] * NUM_ITEMS + torch.cat(examples.items)

    everyone = offered(_ExampleSet().add(stage, holdout_of(users, bought)))
    kept = offered(_ExampleSet().add(stage, holdout_of(users, bought), left_out))
    mine = left_out[torch.isin(left_out // NUM_ITEMS, users)]
    assert torch.isin(mine, everyone).all(), "without it, earlier buyers are offered their hidden items"
    assert not torch.isin(kept, left_out).any()
    assert len(kept) == len(everyone) - len(mine)
    # Withheld before the generators, not filtered after them: every list keeps its length
    short = TwoStage(simulated, CandidateConfig(model=0, ease=10, rp3beta=0, co_purchase=0, trending=0, new_items=5))
    assert torch.isin(offered(_ExampleSet().add(short, holdout_of(users, bought))), left_out).sum() >= 20
    for examples in short.examples(users, withheld=left_out):
        c = examples.candidates
        for g in ("ease", "new_items"):
            listed = c.ranks[:, c.generators.index(g)] <= short.config.size(g)
            assert (torch.bincount(c.rows[listed], minlength=len(examples.users)) == short.config.size(g)).all(), g
    assert not torch.isin(offered(_ExampleSet().add(short, holdout_of(users, bought), left_out)), left_out).any()


def test_new_items_take_fixed_slots_only_where_that_beats_ordering_by_probability_beyond_noise():
    g = torch.Generator().manual_seed(0)
    by_probability = (torch.rand(600, generator=g) < 0.3).float()
    noise = by_probability.clone()   # the same figures, shuffled among 100 users: equal means, noisy pairs
    moved = torch.randperm(600, generator=g)[:100]
    noise[moved] = by_probability[moved[torch.randperm(100, generator=g)]]
    assert not torch.equal(noise, by_probability)
    chosen, _, intervals = pick_placement({0: by_probability, 20: noise, 10: noise.flip(0)}, 50)
    assert chosen == 0 and all(low <= 0 for low, _ in intervals.values())
    clearly = torch.maximum(by_probability, (torch.rand(600, generator=g) < 0.2).float())   # more hits, never fewer
    chosen, figures, intervals = pick_placement({0: by_probability, 20: noise, 10: clearly, 5: clearly}, 50)
    assert chosen == 10 and intervals[10][0] > 0 and figures[10] == figures[5], "a tie keeps fewer new items"


def popularity_shop(num_users: int = 400, seed: int = 0) -> tuple[CutoffInputs, torch.Tensor]:
    """Users who follow the crowd and nothing else: item popularity is Zipf, and every user's three
    past purchases and two purchases in the window are drawn by it (never the same item twice).
    Popularity is the whole signal; a ranker fitted on a few dozen users can only add noise to it."""
    g = torch.Generator().manual_seed(seed)
    weight = 1.0 / torch.arange(1, NUM_ITEMS + 1).float()
    drawn = torch.stack([torch.multinomial(weight, 5, generator=g) for _ in range(num_users)])
    past, window = drawn[:, :3], drawn[:, 3:]
    users, items = torch.arange(num_users).repeat_interleave(3), past.reshape(-1)
    popularity = torch.bincount(items, minlength=NUM_ITEMS).float()
    data = TrainingData(dt.date(2024, 1, 1), torch.arange(FIRST_ITEM, FIRST_ITEM + NUM_ITEMS), users, items,
                        torch.rand(len(users), generator=g) * 30, torch.ones(len(users), dtype=torch.long),
                        popularity, popularity, popularity)
    zeros, ones = torch.zeros(NUM_ITEMS), torch.ones(num_users)
    stats = CutoffStats(
        data.cutoff,
        {"buyers_all": popularity, "buyers_7": popularity, "buyers_30": popularity, "buyers_90": popularity,
         "adopters": zeros, "age_days": zeros + 100, "since_sale_days": ones[:1].expand(NUM_ITEMS).clone(),
         "price": torch.rand(NUM_ITEMS, generator=g) * 10 + 1, "buyers_year_ago": zeros},
        torch.arange(num_users),
        {"last_days": torch.rand(num_users, generator=g) * 30, "first_days": ones * 30, "positives": ones * 3,
         "baskets": ones, "distinct_items": ones * 3, "price": torch.rand(num_users, generator=g) * 10 + 1},
        torch.zeros(num_users, dtype=torch.long), torch.zeros(1, NUM_ITEMS), [])
    return CutoffInputs(Signals(data), stats, ItemContent(data.items)), window


def test_on_a_small_window_the_ranker_never_serves_below_popularity():
    inputs, window = popularity_shop()
    fit_users, later_users = torch.arange(0, 60), torch.arange(60, 400)
    holdout = holdout_of(fit_users, window)
    classic = tune_classic(inputs.signals, holdout)
    signals = inputs.signals.with_classic(classic.params)
    inputs = CutoffInputs(signals, inputs.stats, inputs.content)
    config = CandidateConfig(model=0, ease=20, rp3beta=20, co_purchase=20, trending=20, new_items=0)
    said: list[str] = []
    fitted = fit_two_stage(inputs, holdout, config, RankerConfig(threads=1), log=said.append)
    assert any(m.startswith("ranker settings for") and f"{SMALL_DATA['num_leaves']} leaves" in m for m in said), \
        "the small-data settings were cross-validated beside the defaults"
    gate = judge_on_validation(holdout, inputs.signals, classic, inputs.stats, fitted.validation_top)
    assert RECENT_POPULAR in gate.baselines and MOST_POPULAR in gate.baselines

    later = holdout_of(later_users, window)
    if gate.passed:
        top = torch.cat([b.items for b in TwoStage(inputs, config, fitted.fit.ranker).top_k(later_users, 50)])
        served = slice_metrics(top, later, signals.data, slices=False)[0].metrics["recall@20"]
    else:
        served = evaluate(Scorer(signals, gate.served_weights, stats=inputs.stats), later, slices=False)[0].metrics["recall@20"]
    popular = evaluate(Scorer(signals, {"recent_popularity": 1.0}), later, slices=False)[0].metrics["recall@20"]
    # Later users, whom nothing was fitted on: what the gate let serve is at least as good as popularity.
    assert served >= popular - 0.01, (gate.reason, served, popular)
    assert not gate.passed, gate.reason


def test_earlier_windows_add_examples_in_the_main_windows_layout():
    """An earlier window of the same shop (another draw of users with the same preference) adds
    training examples; the validation figures stay the main window's users, scored out of fold."""
    inputs, bought = planted_shop()
    earlier_inputs, earlier_bought = planted_shop(seed=1)
    config = CandidateConfig(model=0, ease=NUM_ITEMS, rp3beta=0, co_purchase=0, trending=0, new_items=0)
    ranker_config = RankerConfig(folds=3, min_data_in_leaf=10, max_rounds=150, patience=20, threads=1)
    main = holdout_of(torch.arange(0, 60), bought)
    one = fit_two_stage(inputs, main, config, ranker_config)
    said: list[str] = []
    window = EarlierWindow(earlier_inputs, holdout_of(torch.arange(60, NUM_USERS), earlier_bought),
                           torch.empty(0, dtype=torch.long))
    two = fit_two_stage(inputs, main, config, ranker_config, log=said.append, earlier=[window])
    assert two.users == one.users == 60 and two.examples == one.examples, "figures over the main window only"
    assert any(m.startswith("earlier window at 2024-01-01: 340 users") for m in said)
    # the planted preference, learned from 60 users alone, is learned better with 340 more (out of fold)
    assert two.validation["ndcg@20"] > one.validation["ndcg@20"], (one.validation, two.validation)
    laid_out = _in_columns(np.array([[1.0, 3.0]], dtype=np.float32), ["a", "c"], ["a", "b", "c"])
    assert laid_out[0, 0] == 1.0 and np.isnan(laid_out[0, 1]) and laid_out[0, 2] == 3.0
