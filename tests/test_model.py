"""The encoder, its pretraining objectives, checkpoints, warm start and the text view's cold start,
on a small graph with planted structure: three clusters of users, items and categories."""

import datetime as dt
import json
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model import objectives
from unirec_dagster.model.checkpoint import (
    STALE_STAGING_SECONDS,
    CheckpointError,
    CheckpointStore,
    check_compatible,
    load_checkpoint,
)
from unirec_dagster.model.config import EncoderConfig, PretrainConfig
from unirec_dagster.model.encoder import (
    GraphEncoder,
    Propagation,
    RelationWeightedSpMM,
    StackedAdjacency,
    TextView,
    normalized_entries,
)
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.model.sampling import NeighbourSampler, SampledEmbedding
from unirec_dagster.model.trainer import TrainSettings, train
from unirec_dagster.serving.policy import served_checkpoint

CLUSTERS, USERS_PER, ITEMS_PER, TEXT_DIM = 3, 12, 8, 16


def planted_graph(seed: int = 0):
    """Users buy items of their own cluster; each item's category and text follow its cluster.
    Entity ids: users, then items, then the category values."""
    g = torch.Generator().manual_seed(seed)
    users = torch.arange(CLUSTERS * USERS_PER)
    items = torch.arange(CLUSTERS * ITEMS_PER) + len(users)
    categories = torch.arange(CLUSTERS) + len(users) + len(items)
    n = len(users) + len(items) + len(categories)
    buys = [(int(u), int(items[(u // USERS_PER) * ITEMS_PER + j]))
            for u in users for j in torch.randperm(ITEMS_PER, generator=g)[:5]]
    is_a = [(int(i), int(categories[k // ITEMS_PER])) for k, i in enumerate(items)]
    types = torch.cat([torch.zeros(len(users)), torch.ones(len(items)), torch.full((len(categories),), 2)]).long()
    graph = KnowledgeGraph(dt.date(2024, 1, 1), n, types, ["user", "item", "category"], ["purchase", "item_category"],
                           [("user", "item"), ("item", "category")],
                           {"purchase": torch.tensor(buys).T, "item_category": torch.tensor(is_a).T},
                           {"purchase": torch.ones(len(buys)), "item_category": torch.ones(len(is_a))})
    centres = torch.randn(CLUSTERS, TEXT_DIM, generator=g)
    vectors = centres.repeat_interleave(ITEMS_PER, 0) + 0.3 * torch.randn(len(items), TEXT_DIM, generator=g)
    return graph, TextView(items, vectors), centres


def config(**weights) -> PretrainConfig:
    base = {"link_weight": 0.0, "kg_weight": 0.0, "mask_weight": 0.0, "align_weight": 0.0}
    return PretrainConfig(encoder=EncoderConfig(dim=16, layers=2), epochs=40, batch_size=64, lr=0.02, device="cpu",
                          mask_share=0.3, **{**base, **weights})


@pytest.mark.parametrize("objective", ["link", "kg", "mask", "align"])
def test_each_objective_loss_falls(objective):
    graph, text, _ = planted_graph()
    result = pretrain(graph, text, config(**{f"{objective}_weight": 1.0}), "purchase")
    first = sum(r[objective] for r in result.history[:3]) / 3
    last = sum(r[objective] for r in result.history[-3:]) / 3
    # 5%: with three categories a third of the corrupted tails are the true one, which bounds the KG loss.
    assert last < 0.95 * first, (objective, first, last)


def test_same_seed_same_weights():
    graph, text, _ = planted_graph()
    cfg = config(link_weight=1.0, kg_weight=0.5, mask_weight=0.5, align_weight=0.5).model_copy(update={"epochs": 3})
    a = pretrain(graph, text, cfg, "purchase").model.state_dict()
    b = pretrain(graph, text, cfg, "purchase").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _model(n: int = 10) -> GraphEncoder:
    torch.manual_seed(1)
    return GraphEncoder(n, 2, EncoderConfig(dim=4), text_dim=3)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    store = CheckpointStore(tmp_path)
    model = _model()
    saved = store.save("pretrained", dt.date(2024, 1, 1), model, dt.date(2023, 12, 18), ["a", "b"], "fp", note="x")
    loaded = load_checkpoint(saved.path)
    assert loaded.manifest == saved.manifest and loaded.manifest["note"] == "x"
    assert loaded.manifest["num_entities"] == 10 and loaded.partition == dt.date(2024, 1, 1)
    assert all(torch.equal(loaded.build_model().state_dict()[k], v) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob("pretrained/.*")), "no staging folder left behind"

    with pytest.raises(CheckpointError, match="not this warehouse"):
        check_compatible(loaded, lambda n: "another")
    weights = saved.path / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"corrupt!")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(saved.path)
    weights.write_bytes(original)
    manifest = saved.path / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"note": "x"', '"note": "y"'))  # an edit that is still valid JSON
    with pytest.raises(CheckpointError, match="edited"):
        load_checkpoint(saved.path)
    manifest.write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(saved.path)


def test_store_keeps_one_checkpoint_per_partition_and_never_falls_back(tmp_path):
    store = CheckpointStore(tmp_path)
    day = dt.date(2024, 1, 8)
    first = store.save("finetuned", day - dt.timedelta(days=7), _model(), day, ["a", "b"], "fp", promoted=True)
    store.save("finetuned", day, _model(), day, ["a", "b"], "fp", promoted=True)
    rerun = store.save("finetuned", day, _model(), day, ["a", "b"], "fp", promoted=False)
    assert [m["version"] for m in store.manifests("finetuned")] == [first.version, rerun.version], \
        "a re-run replaces its partition's earlier attempt"
    assert store.latest("finetuned", day).version == rerun.version
    assert store.latest("finetuned", day, where=lambda m: m["promoted"]).version == first.version
    assert store.latest("finetuned", partition_before=day).version == first.version
    (rerun.path / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match=rerun.version):
        store.latest("finetuned", day)  # the newest is damaged: fail, do not serve the older one
    with pytest.raises(LookupError, match="never falls back"):
        served_checkpoint(store, day + dt.timedelta(days=1))  # the day's own model is missing: no older one
    assert served_checkpoint(store, day + dt.timedelta(days=1), model_partition=first.partition).version == \
        first.version, "an older model only when named"
    # A damaged checkpoint of one partition does not block the others.
    assert store.of_partition("finetuned", first.partition).version == first.version
    assert store.latest("finetuned", partition_before=day).version == first.version


def test_a_killed_save_leaves_no_staging_folder_behind_the_next_save(tmp_path):
    store = CheckpointStore(tmp_path)
    day = dt.date(2024, 1, 8)
    store.save("finetuned", day, _model(), day, ["a", "b"], "fp")
    # what a save killed between writing its weights and its rename leaves: a hidden staging folder
    killed = tmp_path / "finetuned" / ".finetuned-2024-01-09-20240109T000000000000.abc123"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"partial")
    long_ago = time.time() - STALE_STAGING_SECONDS - 1
    os.utime(killed, (long_ago, long_ago))
    in_progress = tmp_path / "finetuned" / ".finetuned-2024-01-10-20240110T000000000000.def456"
    in_progress.mkdir()                       # fresh: a save that may still be running is left alone
    store.save("finetuned", day + dt.timedelta(days=1), _model(), day, ["a", "b"], "fp")
    assert not killed.exists() and in_progress.exists()
    assert [m["partition"] for m in store.manifests("finetuned")] == ["2024-01-08", "2024-01-09"]


def test_warm_start_keeps_old_rows_and_adds_new_ones():
    old = _model(10)
    torch.manual_seed(2)
    new = GraphEncoder(14, 3, EncoderConfig(dim=4), text_dim=3)
    fresh_rows = new.embedding.weight[10:].detach().clone()
    assert new.warm_start(old.state_dict()) == []
    assert torch.equal(new.embedding.weight[:10], old.embedding.weight)
    assert torch.equal(new.embedding.weight[10:], fresh_rows)
    assert torch.equal(new.relation_logits[:2], old.relation_logits)


def test_text_only_item_lands_near_items_with_similar_text():
    graph, text, centres = planted_graph()
    result = pretrain(graph, text, config(link_weight=1.0, align_weight=1.0).model_copy(update={"epochs": 80}), "purchase")
    model = result.model
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(Propagation.from_graph(graph, model.config), text), dim=-1)
    for cluster in range(CLUSTERS):
        new_item_text = centres[cluster] + 0.3 * torch.randn(TEXT_DIM, generator=torch.Generator().manual_seed(9))
        cold = torch.nn.functional.normalize(model.cold_item_embedding(new_item_text.unsqueeze(0)), dim=-1)
        similarity = (emb[text.ids] @ cold.T).squeeze(1)
        by_cluster = similarity.reshape(CLUSTERS, ITEMS_PER).mean(1)
        assert int(by_cluster.argmax()) == cluster, by_cluster
        assert int(torch.argmax(similarity)) // ITEMS_PER == cluster


def test_stacked_propagation_and_its_gradients_match_the_dense_formula():
    """(Σ_r w_r A_r) x through the stacked CSR: value and gradients (x and the relation weights) as
    dense autograd computes them, with two relations sharing an edge."""
    g = torch.Generator().manual_seed(0)
    edges = [torch.randint(0, 30, (2, 80), generator=g), torch.randint(0, 30, (2, 40), generator=g)]
    edges[1][:, 0] = edges[0][:, 0]  # the same pair in both relations
    parts = [(rid, *normalized_entries(e, 30)) for rid, e in enumerate(edges)]
    stack = StackedAdjacency.from_entries(parts, 30)
    weights = torch.tensor([0.3, 0.7], requires_grad=True)
    x = torch.randn(30, 4, generator=g, requires_grad=True)
    RelationWeightedSpMM.apply(stack, weights, x).pow(2).sum().backward()
    ours = (x.grad.clone(), weights.grad.clone())
    x.grad, weights.grad = None, None
    dense = [torch.sparse_coo_tensor(torch.stack([r, c]), v, (30, 30)).to_dense() for _, r, c, v in parts]
    ((weights[0] * dense[0] + weights[1] * dense[1]) @ x).pow(2).sum().backward()
    assert torch.allclose(ours[0], x.grad, atol=1e-5) and torch.allclose(ours[1], weights.grad, atol=1e-4)


def test_large_graphs_get_larger_batches():
    """Each step propagates the whole KG: the batch grows to keep an epoch within max_steps_per_epoch."""
    graph, text, _ = planted_graph()
    edges = graph.edge_index["purchase"].shape[1]
    lines: list[str] = []
    cfg = config(link_weight=1.0).model_copy(update={"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2})
    pretrain(graph, text, cfg, "purchase", log=lines.append)
    assert f"2 steps of {-(-edges // 2):,} per epoch" in lines[0]


def test_chunked_row_logsumexp_matches_the_plain_one(monkeypatch):
    """The link softmax's chunked logsumexp: value and both gradients as torch.logsumexp gives
    them, with chunks that do not divide the rows evenly."""
    monkeypatch.setattr(objectives, "LOGITS_PER_CHUNK", 30)  # 2 rows of 11 logits per chunk
    g = torch.Generator().manual_seed(0)
    u = torch.randn(37, 5, generator=g, dtype=torch.double, requires_grad=True)
    n = torch.randn(11, 5, generator=g, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(objectives.RowLogSumExp.apply, (u, n))
    assert torch.allclose(objectives.RowLogSumExp.apply(u, n), torch.logsumexp(u @ n.T, 1))


def test_sampled_lookup_with_every_neighbour_equals_the_full_forward():
    """With fanouts above every degree nothing is left out: a sampled lookup gives the full-graph
    embeddings of those ids, readout included, and the same gradients for the relation weights."""
    graph, text, _ = planted_graph()
    model = GraphEncoder(graph.num_entities, len(graph.relation_names), EncoderConfig(dim=8, layers=2), TEXT_DIM)
    with torch.no_grad():
        model.readout_gate.fill_(0.5)
        model.relation_logits.copy_(torch.tensor([0.3, -0.2]))
    propagation = Propagation.from_graph(graph, model.config)
    ids = torch.tensor([5, 0, 40, 5, graph.num_entities - 1])
    full = model(propagation, text)[ids]
    full.pow(2).sum().backward()
    expected = model.relation_logits.grad.clone()
    model.zero_grad()
    sampler = NeighbourSampler(propagation, [1000], layers=2)
    sampled = SampledEmbedding(model, sampler, text, torch.Generator().manual_seed(0))[ids]
    sampled.pow(2).sum().backward()
    assert torch.allclose(sampled, full, atol=1e-5)
    assert torch.allclose(model.relation_logits.grad, expected, atol=1e-5)


def test_sampled_neighbours_are_unbiased():
    """With a fanout of 1, each layer is one draw scaled by the degree: its mean over many draws
    is the full layer."""
    graph, text, _ = planted_graph()
    model = GraphEncoder(graph.num_entities, len(graph.relation_names), EncoderConfig(dim=4, layers=1,
                                                                                     user_readout=False), TEXT_DIM)
    propagation = Propagation.from_graph(graph, model.config)
    ids = torch.arange(graph.num_entities)
    with torch.no_grad():
        full = model(propagation, text)
        sampler, generator = NeighbourSampler(propagation, [1], layers=1), torch.Generator().manual_seed(0)
        lookup = SampledEmbedding(model, sampler, text, generator)
        mean = torch.stack([lookup[ids] for _ in range(3000)]).mean(0)
    assert torch.allclose(mean, full, atol=0.01), (mean - full).abs().max()


def test_sampled_pretraining_learns_as_whole_graph_pretraining_does():
    """Pretraining with fanouts of 2 neighbours: the link loss falls by at least half as much as
    with whole-graph steps, from the same start."""
    graph, text, _ = planted_graph()
    cfg = config(link_weight=1.0, kg_weight=0.5)
    whole = [r["link"] for r in pretrain(graph, text, cfg, "purchase").history]
    sampled = [r["link"] for r in pretrain(graph, text, cfg.model_copy(update={"fanouts": [2]}), "purchase").history]
    # The same start; the first epoch's mean loss differs only by the sampled steps' noise (2.4% here).
    assert abs(sampled[0] - whole[0]) < 0.03 * whole[0]
    assert sampled[0] - sampled[-1] > 0.5 * (whole[0] - whole[-1]) > 0


def test_empty_fanouts_are_refused_not_ignored():
    graph, text, _ = planted_graph()
    with pytest.raises(ValueError, match="fanouts must be positive"):
        pretrain(graph, text, config(link_weight=1.0).model_copy(update={"fanouts": [], "epochs": 1}), "purchase")


class _RecordingTask:
    """45 examples in batches of 10: the two workers' shards differ in length (the last batch has 5),
    and each worker draws as many random numbers as its shard is long, as negatives do."""

    weights, unit, examples_per_epoch = {"fit": 1.0}, "edges", 45

    def __init__(self):
        self.seen: list[list[int]] = []

    def start_epoch(self, generator):
        self.seen.append([])
        return None

    def batches(self, generator):
        order = torch.randperm(self.examples_per_epoch, generator=generator)
        yield from order.split(10)

    def loss(self, model, emb, batch, generator):
        torch.rand(len(batch) * 7, generator=generator)
        self.seen[-1] += batch.tolist()
        return {"fit": emb[batch % model.num_entities].pow(2).mean()}


def _shard_worker(rank: int, world_size: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        task = _RecordingTask()
        train(GraphEncoder(45, 1, EncoderConfig(dim=4, layers=0)), task, None,
              TrainSettings(epochs=3, lr=0.01, seed=0, device="cpu"))
        with open(f"{out}.{rank}", "w") as handle:
            json.dump(task.seen, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_workers_shards_partition_every_epoch(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_shard_worker, args=(2, port, str(tmp_path / "seen")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"seen.{r}").read_text()) for r in range(2)]
    for epoch in range(3):
        first, second = ranks[0][epoch], ranks[1][epoch]
        assert not set(first) & set(second), f"epoch {epoch + 1}: an example on both workers"
        assert sorted(first + second) == list(range(45)), f"epoch {epoch + 1}: the shards miss examples"


class _DivergingTask(_RecordingTask):
    """A loss that turns infinite on the second step."""

    def loss(self, model, emb, batch, generator):
        self.seen[-1] += batch.tolist()
        scale = float("inf") if len(self.seen[-1]) > 10 else 1.0
        return {"fit": emb[batch % model.num_entities].pow(2).mean() * scale}


def test_a_non_finite_loss_stops_training_with_its_place(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1, step 2 \\(fit inf\\)"):
        train(GraphEncoder(45, 1, EncoderConfig(dim=4, layers=0)), _DivergingTask(), None,
              TrainSettings(epochs=2, lr=0.01, seed=0, device="cpu"))
    store = CheckpointStore(tmp_path)
    model = _model()
    name, weights = next((n, p) for n, p in model.named_parameters() if p.dim() == 2)
    with torch.no_grad():
        weights[0, 0] = float("nan")
    saved = store.save("finetuned", dt.date(2024, 1, 1), model, dt.date(2024, 1, 1), ["a", "b"], "fp")
    assert saved.non_finite() == [name]
