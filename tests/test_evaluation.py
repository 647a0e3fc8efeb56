"""Metrics against hand computation, the temporal split, the quality gate, exclusion and fallback."""

import datetime as dt
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import write_text
from unirec_dagster import show
from unirec_dagster.datasets import VerbsSpec
from unirec_dagster.defs.evaluation import nights_below_peer
from unirec_dagster.evaluation.cold_start import (
    choose_hidden_items,
    earlier_buyers,
    hide_items,
    launched_items,
    new_to_the_user,
)
from unirec_dagster.evaluation.evaluate import evaluate
from unirec_dagster.evaluation.metrics import paired_bootstrap, per_user_metrics, ranking_metrics
from unirec_dagster.evaluation.split import HoldoutPairs, load_holdout
from unirec_dagster.features import load_item_text_vectors, refresh_text_embeddings
from unirec_dagster.graph import build_snapshot, load_graph
from unirec_dagster.history import TrainingData, load_training, unsold_until
from unirec_dagster.ingest import build_catalog, ingest_days
from unirec_dagster.model.config import EncoderConfig, PretrainConfig
from unirec_dagster.model.encoder import GraphEncoder, Propagation
from unirec_dagster.model.pretrain import PretrainTask
from unirec_dagster.model.text_encoder import TextEncoder
from unirec_dagster.ranking.baselines import RECENT_POPULAR
from unirec_dagster.ranking.classic import EASE_RECENT
from unirec_dagster.ranking.scoring import Scorer
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.two_stage import TWO_STAGE
from unirec_dagster.serving import recommend
from unirec_dagster.serving.reasons import POSITIVE, Explainer
from unirec_dagster.serving.recommend import (
    ServingSettings,
    publish_recommendations,
    score_users,
    write_recommendations,
    write_similar_items,
)
from unirec_dagster.serving.shards import ShardFailed
from unirec_dagster.training.blend import fit_blend
from unirec_dagster.training.fit import negative_candidates
from unirec_dagster.training.gate import GateResult
from unirec_dagster.warehouse import rows


def test_metrics_match_hand_computation():
    # User 0: positives {1, 3}, ranked [1, 2, 3] -> hits at ranks 1 and 3.
    # User 1: positives {4, unknown item}, ranked [0, 1, 2] -> no hit.
    top = torch.tensor([[1, 2, 3], [0, 1, 2]])
    m = ranking_metrics(top, torch.tensor([0, 0, 1, 1]), torch.tensor([1, 3, 4, -1]), torch.tensor([2, 2]),
                        num_items=5, ks=(1, 3))
    assert m["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx(((1 + 1 / math.log2(4)) / ideal + 0) / 2)
    assert m["hitrate@3"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["coverage@1"] == pytest.approx(2 / 5)


@pytest.fixture
def shop(tmp_path, load, conn):
    # Days 1-3 before the cutoff (day 4); day 4 is the test window.
    lines = {
        "2024-01-01": ["u1,A,UK", "u1,B,UK", "u2,A,FR", "u2,C,FR", "u3,B,UK", "u5,A,UK"],
        "2024-01-02": ["u1,C,UK", "u2,B,FR", "u3,A,UK", "u3,C,UK"],
        "2024-01-03": ["u4,D,UK", "u1,A,UK", "u2,A,FR"],
        "2024-01-04": ["u1,D,UK", "u1,A,UK", "u2,D,FR", "u6,A,UK", "u4,A,UK"],
    }
    for day, entries in lines.items():
        write_text(tmp_path / f"{day}.csv", "user,item,country,ts\n" + "".join(
            f"{e},{day} 1{i}:00:00\n" for i, e in enumerate(entries)))
    spec = load({}, users={"attributes": {"country": "country"}})
    days = [dt.date(2024, 1, d) for d in range(1, 5)]
    ingest_days(conn, spec, days)
    for kind in ("items", "users"):
        build_catalog(conn, spec, kind)
    build_snapshot(conn, spec, dt.date(2024, 1, 4))
    return spec


def keys(conn, kind, ids):
    names = dict(rows(conn, "SELECT entity_id, natural_key FROM kg.entities WHERE entity_type = $t", {"t": kind}))
    return [names[int(i)] for i in ids]


def test_split_keeps_the_test_window_out_of_training(conn, shop):
    cutoff = dt.date(2024, 1, 4)
    data = load_training(conn, shop, cutoff)
    train = set(zip(keys(conn, "user", data.train_users), keys(conn, "item", data.items[data.train_items])))
    assert ("u1", "D") not in train and ("u2", "D") not in train and ("u4", "A") not in train
    assert ("u1", "A") in train and ("u3", "C") in train
    # popularity counts distinct buyers before the cutoff: summed over items, the distinct pairs
    assert data.popularity.sum() == len(data.train_users) == 11
    holdout = load_holdout(conn, shop, data, cutoff + dt.timedelta(days=1))
    # u1 bought A before (not new to u1), u6 has no history: neither counts.
    assert keys(conn, "user", holdout.users) == ["u1", "u2", "u4"]
    pairs = sorted(zip(keys(conn, "user", holdout.users[holdout.pair_users]),
                       keys(conn, "item", data.items[holdout.pair_items])))
    assert pairs == [("u1", "D"), ("u2", "D"), ("u4", "A")]
    # With A's history forgotten (item dropout), u1 buying A again is a pair like any other.
    a = data.items[keys(conn, "item", data.items).index("A")]
    forgot = load_holdout(conn, shop, data, cutoff + dt.timedelta(days=1), forgotten=a.reshape(1))
    assert sorted(zip(keys(conn, "user", forgot.users[forgot.pair_users]),
                      keys(conn, "item", data.items[forgot.pair_items]))) == [("u1", "A"), *pairs]


def _figures(recall: list[float]) -> dict[str, torch.Tensor]:
    return {"recall@20": torch.tensor(recall), "ndcg@20": torch.tensor(recall) / 2}


def test_gate_serves_the_ranker_only_when_it_beats_every_simple_baseline_beyond_noise():
    weights = {EASE_RECENT: {"ease": 1.0, "recent_popularity": 1.0}, RECENT_POPULAR: {"recent_popularity": 1.0}}
    users = torch.arange(200)
    peer = (users % 4 == 0).float().tolist()                     # 0.25
    popular = (users % 5 == 0).float().tolist()                  # 0.20
    baselines = {EASE_RECENT: _figures(peer), RECENT_POPULAR: _figures(popular)}
    # Ahead of the strongest on average by 3 users in 200, ahead or behind user by user at random:
    # no evidence, so the strongest baseline serves.
    noisy = torch.tensor(peer)
    noisy[(users % 4 == 0).nonzero().flatten()[:20]] = 0.0       # 20 of the peer's hits missed
    noisy[(users % 4 != 0).nonzero().flatten()[:23]] = 1.0       # 23 others found
    gate = GateResult.judge(_figures(noisy.tolist()), baselines, weights)
    assert gate.ranker["recall@20"] > gate.baseline_metrics["recall@20"]
    assert not gate.passed and gate.policy == EASE_RECENT and gate.served_weights == weights[EASE_RECENT]
    low, high = gate.intervals[EASE_RECENT]
    assert low < 0 < high and f"serving {EASE_RECENT}" in gate.reason
    # Every user the peer finds, and 30 more: beyond noise against both, so the ranker serves.
    better = torch.tensor(peer)
    better[(users % 4 != 0).nonzero().flatten()[:30]] = 1.0
    gate = GateResult.judge(_figures(better.tolist()), baselines, weights)
    assert gate.passed and gate.policy == TWO_STAGE and gate.served_weights is None
    assert all(low > 0 for low, _ in gate.intervals.values()) and "beats every simple baseline" in gate.reason
    # Far above the classic peer but not above popularity, which the planted window favours: popularity serves.
    baselines[RECENT_POPULAR] = _figures([1.0] * 100 + [0.0] * 100)
    gate = GateResult.judge(_figures(better.tolist()), baselines, weights)
    assert gate.policy == RECENT_POPULAR and RECENT_POPULAR in gate.reason
    unfitted = GateResult.judge(None, baselines, weights, "only 2 validation users")
    assert unfitted.policy == RECENT_POPULAR and "only 2 validation users" in unfitted.reason


def test_per_user_figures_average_to_the_metrics_and_the_bootstrap_brackets_the_difference():
    top = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 0, 2]])
    pair_users, pair_items = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 2, 0, -1])
    per_user = torch.bincount(pair_users, minlength=3)
    each = per_user_metrics(top, pair_users, pair_items, per_user, num_items=3, k=2)
    means = ranking_metrics(top, pair_users, pair_items, per_user, 3, ks=(2,))
    assert each["recall@2"].tolist() == [0.5, 0.0, 0.0]
    assert float(each["recall@2"].mean()) == pytest.approx(means["recall@2"])
    assert float(each["ndcg@2"].mean()) == pytest.approx(means["ndcg@2"])
    a, b = torch.rand(500, generator=torch.Generator().manual_seed(1)), torch.zeros(500)
    low, high = paired_bootstrap(a + 0.1, a)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1), "a constant difference has no spread"
    low, high = paired_bootstrap(a, b)
    assert low < float(a.mean()) < high and low > 0.45


def test_recommendations_exclude_purchases_fall_back_and_replace(conn, shop, tmp_path, capsys):
    run_date = dt.date(2024, 1, 3)
    data = load_training(conn, shop, run_date + dt.timedelta(days=1))
    scorer = Scorer(Signals(data), {"co_purchase": 0.5, "popularity": 0.5})
    for _ in range(2):  # a re-run replaces the partition
        stats = write_recommendations(conn, shop, run_date, scorer, "v1", "run", ServingSettings(k=3, min_history=2))
    recs = rows(conn, "SELECT user_id, item_id, reason FROM serving.recommendations WHERE partition_date = $d",
                {"d": run_date})
    assert stats.rows == len(recs)
    bought = {("u1", "A"), ("u1", "B"), ("u1", "C"), ("u2", "A"), ("u2", "B"), ("u2", "C"), ("u3", "A"),
              ("u3", "B"), ("u3", "C"), ("u4", "D"), ("u5", "A")}
    assert not bought & {(u, i) for u, i, _ in recs}
    by_user = {}
    for user, _, reason in recs:
        by_user.setdefault(user, []).append(reason)
    # u4 and u5 have one purchase (< min_history 2): recently popular in their country.
    assert all(r.startswith("popular recently") for r in by_user["u4"] + by_user["u5"])
    assert "u6" not in by_user  # no event up to the run date: no history, no list
    assert len(recs) == len({(u, i) for u, i, _ in recs})
    conn.close()  # the viewer opens the file read-only
    assert show.main(["--user", "u4", "--warehouse", str(tmp_path / "warehouse.duckdb")]) == 0
    assert "popular recently" in capsys.readouterr().out
    assert show.main(["--user", "u6", "--warehouse", str(tmp_path / "warehouse.duckdb")]) == 1
    assert "no event up to then" in capsys.readouterr().err
    warehouse = str(tmp_path / "warehouse.duckdb")
    assert show.main(["--user", "u4", "--warehouse", warehouse, "--date", "2024-02-01"]) == 1
    assert "2024-02-01 was never built (1 partitions from 2024-01-03 to 2024-01-03)" in capsys.readouterr().err
    assert show.main(["--user", "u4", "--warehouse", str(tmp_path / "nowhere.duckdb")]) == 1
    assert "no warehouse at" in capsys.readouterr().err
    for limit in ("0", "99999999999999999999"):   # the second once ended in DuckDB's INT128 traceback
        with pytest.raises(SystemExit):
            show.main(["--user", "u4", "--warehouse", warehouse, "--limit", limit])
        assert "is not a number of recommendations from 1 to 10,000" in capsys.readouterr().err
    for name, content in (("empty.duckdb", b""), ("foreign.duckdb", b"root:x:0:0:root:/root:/bin/bash\n")):
        (tmp_path / name).write_bytes(content)
        assert show.main(["--user", "u4", "--warehouse", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"cannot read {tmp_path / name} as a DuckDB warehouse") and "Traceback" not in err
        assert "root:x" not in err, "a foreign file's line is never echoed"


def test_blocked_blend_ranks_as_the_full_matrix():
    """The served path (blocks, folded model standardisation, reasons) against the plain formula."""
    g = torch.Generator().manual_seed(0)
    num_users, num_items = 90, 40
    pair_users = torch.arange(num_users).repeat_interleave(5)
    key = torch.unique(pair_users * num_items + torch.randint(0, num_items, (len(pair_users),), generator=g))
    counts = torch.rand(num_items, generator=g) * 10
    data = TrainingData(dt.date(2024, 1, 1), torch.arange(num_users, num_users + num_items), key // num_items,
                        key % num_items, torch.zeros(len(key)), torch.ones(len(key), dtype=torch.long), counts, counts / 2,
                        counts)
    embeddings = torch.randn(num_users + num_items, 8, generator=g)
    weights = {"model": 0.5, "co_purchase": 0.2, "recent_popularity": 0.2, "popularity": 0.1}
    scorer = Scorer(Signals(data), weights, embeddings)
    users = torch.arange(num_users)
    raw = {name: scorer.feature(name, users).expand(num_users, -1) for name in weights}
    parts = {name: weights[name] * (f - f.mean(1, keepdim=True)) / f.std(1, keepdim=True) for name, f in raw.items()}
    full = sum(parts.values())
    r, c = scorer.signals.exclusions(users)
    full[r, c] = float("-inf")
    expected = torch.topk(full, 10, dim=1)
    explainer = Explainer(scorer.signals, scorer.embeddings, verbs=VerbsSpec(positive="rated", person="viewers"))
    top = score_users(scorer, users, 10, True, explainer, chunk=16)
    items = top.items
    assert torch.equal(items, expected.indices)
    assert torch.allclose(top.scores, expected.values, atol=1e-4)
    assert not set(zip(r.tolist(), c.tolist())) & {(u, int(i)) for u in range(num_users) for i in items[u]}
    # Each reason is the template of the signal that contributed most; an anchor is a past purchase.
    lead = torch.stack([p.expand(num_users, -1).gather(1, items) for p in parts.values()], -1).argmax(-1)
    bought = {(u, i) for u, i in zip(r.tolist(), c.tolist())}
    for u in range(num_users):
        for j in range(10):
            name, text = list(weights)[lead[u, j]], top.templates[top.reasons[u, j]]
            # in the dataset's words: "because you rated", "rated together with", "similar viewers rated it"
            assert text.startswith(explainer.words(POSITIVE[name]).split("{")[0]) or text == "similar viewers rated it", \
                (name, text)
            assert "{verb}" not in text and "{people}" not in text and "bought" not in text
            anchor = int(top.anchors[u, j])
            assert anchor == -1 or (u, anchor) in bought
            assert ("{anchor}" in text) == (anchor >= 0)


def test_blend_learns_a_trending_signal():
    """Validation buyers pick what is popular lately but not all-time: the learned blend weighs
    recent popularity up, all-time popularity down (negative), and the random model near zero."""
    g = torch.Generator().manual_seed(1)
    num_users, num_items = 80, 30
    popular, recent = torch.rand(num_items, generator=g) * 50, torch.rand(num_items, generator=g) * 50
    pair_users = torch.arange(num_users).repeat_interleave(2)
    key = torch.unique(pair_users * num_items + torch.randint(0, num_items, (len(pair_users),), generator=g))
    data = TrainingData(dt.date(2024, 1, 1), torch.arange(num_users, num_users + num_items), key // num_items,
                        key % num_items, torch.zeros(len(key)), torch.ones(len(key), dtype=torch.long), popular, recent,
                        popular)
    scorer = Scorer(Signals(data), {}, torch.randn(num_users + num_items, 8, generator=g))
    trending = torch.log1p(recent) - torch.log1p(popular)
    users, items = [], []
    for user in range(num_users):  # each user buys 3 of the most trending items they do not have yet
        owned = set((key[key // num_items == user] % num_items).tolist())
        picks = [int(i) for i in torch.argsort(trending, descending=True) if int(i) not in owned][:3]
        users += [user] * 3
        items += picks
    holdout = HoldoutPairs(torch.arange(num_users), torch.tensor(users), torch.tensor(items),
                           torch.full((num_users,), 3), torch.zeros(len(users), dtype=torch.bool))
    weights = fit_blend(scorer, holdout)
    assert weights["recent_popularity"] > 1.0 and weights["popularity"] < -1.0
    assert abs(weights["model"]) < 0.5 * weights["recent_popularity"]
    recall = evaluate(Scorer(scorer.signals, weights, scorer.embeddings), holdout, slices=False)[0].metrics["recall@10"]
    assert recall > 0.9


def test_never_recommended_items_are_not_served(conn, shop):
    """Items the spec marks as not products (postage, fees) reach nobody, by model or by fallback."""
    run_date = dt.date(2024, 1, 3)
    data = load_training(conn, shop, run_date + dt.timedelta(days=1))
    scorer = Scorer(Signals(data), {"co_purchase": 0.5, "popularity": 0.5})
    write_recommendations(conn, shop, run_date, scorer, "v1", "run", ServingSettings(k=3, min_history=2))
    served = {i for (i,) in rows(conn, "SELECT DISTINCT item_id FROM serving.recommendations")}
    assert "D" in served  # the only item u1..u3 have not bought yet, and popular for u5
    spec = shop.model_copy(update={"items": shop.items.model_copy(update={"never_recommend": ["D"]})})
    write_recommendations(conn, spec, run_date, scorer, "v1", "run", ServingSettings(k=3, min_history=2))
    served = {i for (i,) in rows(conn, "SELECT DISTINCT item_id FROM serving.recommendations")}
    assert served and "D" not in served
    write_similar_items(conn, spec, run_date, data.items, torch.randn(data.num_items, 4), "v1", k=3)
    pairs = rows(conn, "SELECT item_id, similar_item_id FROM serving.similar_items")
    assert {i for i, _ in pairs} == {"A", "B", "C", "D"} and "D" not in {j for _, j in pairs}
    assert len(pairs) == 3 * 2 + 3  # A, B, C: the two others but not D; D: A, B and C
    # Partitioned: another day's run replaces its own partition only; the latest view reads the newest.
    later = run_date + dt.timedelta(days=1)
    write_similar_items(conn, spec, later, data.items, torch.randn(data.num_items, 4), "v2", k=1)
    write_similar_items(conn, spec, later, data.items, torch.randn(data.num_items, 4), "v2", k=1)
    assert rows(conn, "SELECT run_date, model_version, count(*) FROM serving.similar_items GROUP BY ALL ORDER BY 1") \
        == [(run_date, "v1", 9), (later, "v2", 4)]
    assert rows(conn, "SELECT DISTINCT model_version FROM serving.latest_similar_items") == [("v2",)]


def test_hidden_items_lose_their_training_events_but_stay_candidates(conn, shop, tmp_path):
    cutoff = dt.date(2024, 1, 4)
    hidden = choose_hidden_items(conn, cutoff, share=0.25, seed=0)  # one of the four items
    assert len(hidden) == 1
    conn.close()
    scratch = hide_items(tmp_path / "warehouse.duckdb", tmp_path / "hidden.duckdb", cutoff, hidden)
    assert rows(scratch, "SELECT count(*) FROM raw.events WHERE ts < $c AND item_id = $i",
                {"c": dt.datetime(2024, 1, 4), "i": hidden[0]})[0][0] == 0
    assert rows(scratch, "SELECT listed FROM raw.items WHERE item_id = $i", {"i": hidden[0]})[0][0]
    build_snapshot(scratch, shop, cutoff - dt.timedelta(days=1))
    data = load_training(scratch, shop, cutoff)
    trained = set(keys(scratch, "item", data.items[data.train_items]))
    assert hidden[0] not in trained, "no training interaction of a hidden item"
    assert hidden[0] in keys(scratch, "item", data.items), "still a candidate: a catalog item nobody has bought"
    assert not data.interacted[keys(scratch, "item", data.items).index(hidden[0])]
    scratch.close()


def test_cold_start_pairs_are_new_to_the_user_in_the_real_data_and_launches_are_first_sold_in_the_window(
        conn, shop, tmp_path):
    cutoff = dt.date(2024, 1, 4)
    earlier = earlier_buyers(conn, cutoff, ["A"], "purchase")
    assert sorted(earlier.column("user_id").to_pylist()) == ["u1", "u2", "u3", "u5"]
    assert launched_items(conn, dt.date(2024, 1, 3), dt.date(2024, 1, 5), "purchase") == ["D"]
    assert launched_items(conn, cutoff, dt.date(2024, 1, 5), "purchase") == [], "D was sold before day 4"
    conn.close()
    scratch = hide_items(tmp_path / "warehouse.duckdb", tmp_path / "hidden.duckdb", cutoff, ["A"])
    build_snapshot(scratch, shop, cutoff - dt.timedelta(days=1))
    data = load_training(scratch, shop, cutoff)
    holdout = load_holdout(scratch, shop, data, cutoff + dt.timedelta(days=1))

    def pairs(h):
        return sorted(zip(keys(scratch, "user", h.users[h.pair_users]), keys(scratch, "item", data.items[h.pair_items])))
    # Without A's history u1 buying A again looks new; in the real data it is a repeat, and no pair.
    assert ("u1", "A") in pairs(holdout)
    real = new_to_the_user(scratch, data, holdout, earlier)
    assert pairs(real) == [("u1", "D"), ("u2", "D"), ("u4", "A")]
    assert real.positives_per_user.tolist() == [1, 1, 1]
    scratch.close()


def catalog_shop(tmp_path, load, conn, events: str, items: str):
    """A one-day shop whose item file lists items nobody has bought; ingested, catalogued, KG built."""
    write_text(tmp_path / "2024-01-01.csv", "user,item,ts\n" + textwrap.dedent(events).lstrip("\n"))
    write_text(tmp_path / "items.csv", "item,title\n" + textwrap.dedent(items).lstrip("\n"))
    spec = load({}, items={"file": {"path": "items.csv"}, "id": "item", "title": "title"})
    ingest_days(conn, spec, [dt.date(2024, 1, 1)])
    for kind in ("items", "users"):
        build_catalog(conn, spec, kind)
    build_snapshot(conn, spec, dt.date(2024, 1, 1))
    return spec


def test_a_catalog_item_nobody_bought_is_an_entity_with_text_and_can_be_recommended(tmp_path, load, conn):
    spec = catalog_shop(tmp_path, load, conn, """
        u1,A,2024-01-01 10:00:00
        u1,B,2024-01-01 11:00:00
        u2,B,2024-01-01 12:00:00
        """, """
        A,red enamel mug
        B,wooden doormat
        Z,blue enamel mug
        """)
    assert rows(conn, "SELECT count(*) FROM kg.entities WHERE entity_type = 'item' AND natural_key = 'Z'")[0][0] == 1
    refresh_text_embeddings(conn, TextEncoder())
    ids, _ = load_item_text_vectors(conn)
    z = keys(conn, "item", ids).index("Z")
    assert z >= 0, "the new item has a text vector"

    data = load_training(conn, spec, dt.date(2024, 1, 2))
    items = keys(conn, "item", data.items)
    assert "Z" in items and not data.interacted[items.index("Z")]
    # Unsold until the cutoff: at a validation cutoff the ranker is not taught it does not sell.
    assert unsold_until(conn, spec, data.items, dt.date(2024, 1, 2)).tolist() == [items.index("Z")]
    assert len(unsold_until(conn, spec, data.items, dt.date(2024, 1, 1))) == 3
    entity = {name: int(data.items[i]) for i, name in enumerate(items)}
    u1 = int(rows(conn, "SELECT entity_id FROM kg.entities WHERE natural_key = 'u1'")[0][0])
    num_entities = rows(conn, "SELECT count(*) FROM kg.entities")[0][0]
    embeddings = torch.randn(num_entities, 4, generator=torch.Generator().manual_seed(0))
    embeddings[entity["Z"]] = embeddings[entity["A"]] + 0.01   # the model places Z beside A (its text)
    embeddings[u1] = embeddings[entity["A"]]
    scorer = Scorer(Signals(data), {"model": 1.0}, embeddings)
    write_recommendations(conn, spec, dt.date(2024, 1, 1), scorer, "v1", "run", ServingSettings(k=1))
    assert rows(conn, "SELECT item_id, reason FROM serving.recommendations WHERE user_id = 'u1'") == \
        [("Z", "new in the catalog, like red enamel mug")]

    # Training never uses it as a negative: it would only ever be pushed below everything.
    graph = load_graph(conn, dt.date(2024, 1, 1))
    task = PretrainTask(graph, None, PretrainConfig(), None)
    assert set(keys(conn, "item", task.items)) == {"A", "B"}
    assert set(keys(conn, "item", negative_candidates(data))) == {"A", "B"}

    # Nor has it a learned identity: its ID row (never trained on a behaviour) plays no part.
    model = GraphEncoder(graph.num_entities, len(graph.relation_names), EncoderConfig(dim=8))
    propagation = Propagation.from_graph(graph, model.config)
    before = model(propagation)
    with torch.no_grad():
        model.embedding.weight[entity["Z"]] += 100.0
    assert torch.allclose(model(propagation), before)


def test_shards_write_the_rows_of_one_process_and_a_killed_shard_leaves_the_night_as_it_was(conn, shop, monkeypatch):
    run_date = dt.date(2024, 1, 3)
    data = load_training(conn, shop, run_date + dt.timedelta(days=1))
    scorer = Scorer(Signals(data), {"co_purchase": 0.5, "popularity": 0.5})
    served = """SELECT user_id, item_id, rank, score, reason, model_version FROM serving.recommendations
                WHERE partition_date = $d ORDER BY user_id, rank"""
    write_recommendations(conn, shop, run_date, scorer, "v1", "run", ServingSettings(k=3))
    one_process = rows(conn, served, {"d": run_date})
    parent, last_user, rank_users = os.getpid(), int(data.train_users.max()), recommend.rank_users

    def killed_in_its_shard(policy, users, *args):
        if os.getpid() != parent and last_user in users.tolist():
            os.kill(os.getpid(), signal.SIGKILL)
        return rank_users(policy, users, *args)

    monkeypatch.setattr(recommend, "rank_users", killed_in_its_shard)
    killed = r"1 of 3 shards failed, nothing written: shard-2 \(process \d+\) was killed by SIGKILL"
    with pytest.raises(ShardFailed, match=killed):
        write_recommendations(conn, shop, run_date, scorer, "v2", "run", ServingSettings(k=3, shards=3))
    assert rows(conn, served, {"d": run_date}) == one_process
    monkeypatch.undo()
    write_recommendations(conn, shop, run_date, scorer, "v1", "run", ServingSettings(k=3, shards=3))
    assert rows(conn, served, {"d": run_date}) == one_process and len({r[0] for r in one_process}) >= 3


def test_show_reads_the_published_partition_while_a_run_writes(conn, shop, tmp_path, capsys):
    run_date = dt.date(2024, 1, 3)
    data = load_training(conn, shop, run_date + dt.timedelta(days=1))
    write_recommendations(conn, shop, run_date, Scorer(Signals(data), {"popularity": 1.0}), "v1", "run",
                          ServingSettings(k=2))
    warehouse = tmp_path / "warehouse.duckdb"
    publish_recommendations(conn, run_date, warehouse)
    conn.close()
    writer = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(60)", str(warehouse)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        assert show.main(["--user", "u1", "--warehouse", str(warehouse)]) == 0
        out = capsys.readouterr()
        assert "published snapshot" in out.err and "u1, recommendations for 2024-01-03" in out.out
    finally:
        writer.kill()


def test_every_nth_slot_goes_to_a_new_catalog_item(tmp_path, load, conn):
    spec = catalog_shop(tmp_path, load, conn, """
        u1,A,2024-01-01 10:00:00
        u1,B,2024-01-01 10:00:00
        u2,B,2024-01-01 11:00:00
        u2,C,2024-01-01 11:00:00
        u3,C,2024-01-01 12:00:00
        u3,D,2024-01-01 12:00:00
        u4,C,2024-01-01 12:00:00
        """, """
        A,red enamel mug
        B,wooden doormat
        C,blue enamel mug
        D,oak doormat
        Y,green enamel mug
        Z,jute doormat
        """)
    data = load_training(conn, spec, dt.date(2024, 1, 2))
    scorer = Scorer(Signals(data), {"popularity": 1.0})

    def served(settings):
        write_recommendations(conn, spec, dt.date(2024, 1, 1), scorer, "v1", "run", settings)
        return [item for (item,) in rows(conn, "SELECT item_id FROM serving.recommendations WHERE user_id = 'u1' "
                                                "ORDER BY rank")]

    ranked = served(ServingSettings(k=4, new_item_every=2))
    assert ranked[0] == "C"                       # the best seller u1 has not bought
    assert ranked[2] == "D"
    assert set(ranked[1::2]) == {"Y", "Z"}        # ranks 2 and 4: the items nobody has bought yet
    assert served(ServingSettings(k=2, new_item_every=0))[0] == "C"


def test_a_published_partition_may_live_under_any_folder_name(conn, shop, tmp_path):
    run_date = dt.date(2024, 1, 3)
    data = load_training(conn, shop, run_date + dt.timedelta(days=1))
    write_recommendations(conn, shop, run_date, Scorer(Signals(data), {"popularity": 1.0}), "v1", "run",
                          ServingSettings(k=2))
    published = publish_recommendations(conn, run_date, tmp_path / "o'brien's shop" / "warehouse.duckdb")
    assert published.exists()
    assert rows(conn, "SELECT count(*) FROM read_parquet($p)", {"p": str(published)})[0][0] == \
        rows(conn, "SELECT count(*) FROM serving.recommendations WHERE partition_date = $d", {"d": run_date})[0][0]


def test_drift_counts_the_evaluated_nights_below_the_peer_in_a_row():
    ratios = [("2011-01-01", 1.1), ("2011-01-02", 0.9), ("2011-01-03", 0.95), ("2011-01-05", 0.8)]
    assert nights_below_peer(ratios, "2011-01-05") == ["2011-01-05", "2011-01-03", "2011-01-02"]
    assert nights_below_peer(ratios, "2011-01-02") == ["2011-01-02"]
    assert nights_below_peer(ratios + [("2011-01-04", 1.0)], "2011-01-05") == ["2011-01-05"]
    assert nights_below_peer(ratios, "2011-01-01") == []
