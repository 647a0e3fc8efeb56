"""The whole asset graph materialized by Dagster on two small synthetic shops, one after the
other, with the same models folder: switching the dataset and the warehouse needs nothing by hand."""

import base64
import datetime as dt

import dagster as dg
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from tests.conftest import warehouse_resources
from unirec_dagster.api import create_app
from unirec_dagster.datasets import load_spec
from unirec_dagster.defs.evaluation import model_evaluation
from unirec_dagster.defs.features import item_text_embeddings
from unirec_dagster.defs.graph import knowledge_graph
from unirec_dagster.defs.ingest import raw_events, raw_items, raw_users
from unirec_dagster.defs.resources import ModelStoreResource, TrackingResource
from unirec_dagster.defs.serving import coverage, recommendations, similar_items
from unirec_dagster.defs.training import finetuned_recommender, pretrained_encoder
from unirec_dagster.evaluation.served import served_ranking
from unirec_dagster.evaluation.steps import SERVED
from unirec_dagster.history import never_recommended
from unirec_dagster.ranking.classic import CLASSIC
from unirec_dagster.serving.policy import served_checkpoint, served_policy
from unirec_dagster.serving.recommend import ServingSettings, published_dir, rank_users
from unirec_dagster.serving.shards import rank_in_shards
from unirec_dagster.synthetic import generate, write_dataset
from unirec_dagster.warehouse import connect, rows

pytestmark = pytest.mark.slow

START, RUN_DATE = dt.date(2010, 12, 1), dt.date(2010, 12, 28)  # inside the sample's partition calendar
WEEK, SATURDAY = "2010-12-19", "2010-12-25"  # pretraining's week before RUN_DATE, and its last day
MODEL_ASSETS = [knowledge_graph, finetuned_recommender, recommendations, model_evaluation, similar_items, coverage]
SMALL = {"ops": {
    "pretrained_encoder": {"config": {"epochs": 3, "encoder": {"dim": 16}}},
    "finetuned_recommender": {"config": {"max_epochs": 6, "patience": 2, "encoder": {"dim": 16}}},
    "knowledge_graph": {"config": {"validation_days": 7}},
}}


def shop(tmp_path, name: str, seed: int):
    spec_path = write_dataset(generate(6000, n_days=40, n_items=150, start=START, seed=seed), tmp_path / name)
    spec = yaml.safe_load(spec_path.read_text())
    spec_path.write_text(yaml.safe_dump({**spec, "name": name}, sort_keys=False))
    return spec_path


# A ranker that may only look at three trending items per user cannot beat the tuned peers.
HOBBLED = {"ops": {**SMALL["ops"], "finetuned_recommender": {"config": {
    **SMALL["ops"]["finetuned_recommender"]["config"],
    "ranking": {"candidates": {"model": 0, "ease": 0, "rp3beta": 0, "co_purchase": 0, "trending": 3, "new_items": 0}}}}}}


def pretrain_the_week(resources: dict, run_config: dict) -> dg.ExecuteInProcessResult:
    """As the deployment runs it: the graph of the week's Saturday, then the weekly partition."""
    assert dg.materialize([knowledge_graph], resources=resources, partition_key=SATURDAY,
                          run_config={"ops": {"knowledge_graph": run_config["ops"]["knowledge_graph"]}}).success
    return dg.materialize([pretrained_encoder], resources=resources, partition_key=WEEK,
                          run_config={"ops": {"pretrained_encoder": run_config["ops"]["pretrained_encoder"]}})


def materialize_everything(resources: dict, run_config: dict = SMALL) -> tuple[dg.ExecuteInProcessResult,
                                                                                dg.ExecuteInProcessResult]:
    """(the week's pretraining, the day's models) on a freshly ingested warehouse."""
    last = RUN_DATE + dt.timedelta(days=9)
    assert dg.materialize([raw_events], resources=resources, tags={
        "dagster/asset_partition_range_start": START.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat()}).success
    assert dg.materialize([raw_items, raw_users, item_text_embeddings], resources=resources).success
    pretraining = pretrain_the_week(resources, run_config)
    assert pretraining.success
    return pretraining, dg.materialize(MODEL_ASSETS, resources=resources, partition_key=RUN_DATE.isoformat(),
                                       run_config=model_config(run_config))


def model_config(run_config: dict) -> dict:
    return {"ops": {k: v for k, v in run_config["ops"].items() if k != "pretrained_encoder"}}


def assert_served_as_ranked_by_the_policy(warehouse, spec_path, models, policy_name: str) -> None:
    """Every user with a purchase gets exactly the policy's top K, rebuilt in process from the checkpoint."""
    conn, spec = connect(warehouse), load_spec(spec_path)
    store = ModelStoreResource(root=str(models)).for_warehouse(conn, spec)
    policy = served_policy(conn, spec, served_checkpoint(store, RUN_DATE), RUN_DATE)
    assert policy.name == policy_name
    data = policy.blend.signals.data
    users = torch.unique(data.train_users)
    never = never_recommended(conn, spec, data.items)
    expected = rank_users(policy.ranking, users, ServingSettings(), None, never)
    served, unserved = served_ranking(conn, RUN_DATE, users, data)
    conn.close()
    assert unserved == 0 and torch.equal(served, expected.items)
    sharded = rank_in_shards(lambda part: rank_users(policy.ranking, part, ServingSettings(), None, never), users, 2)
    assert torch.equal(sharded.items, expected.items) and torch.allclose(sharded.scores, expected.scores)
    reasons = [[top.templates[r] for r in row] for top in (sharded, expected) for row in top.reasons.tolist()]
    assert reasons[:len(users)] == reasons[len(users):]


def assert_tracked(pretraining: dg.ExecuteInProcessResult, result: dg.ExecuteInProcessResult, uri: str,
                   reachable: bool) -> None:
    """Each training and evaluation step is an MLflow run tagged with the Dagster run and partition,
    named in the step's metadata; with the store unreachable, the steps warn and succeed without."""
    runs = {"pretrained_encoder": (pretraining, WEEK), "finetuned_recommender": (result, RUN_DATE.isoformat()),
            "model_evaluation": (result, RUN_DATE.isoformat())}
    named = {step: run.asset_materializations_for_node(step)[0].metadata.get("mlflow_run_id")
             for step, (run, _) in runs.items()}
    if not reachable:
        assert named == dict.fromkeys(runs)
        return
    client = MlflowClient(tracking_uri=uri)
    for step, run_id in named.items():
        run, partition = runs[step]
        tracked = client.get_run(run_id.value)
        assert tracked.data.tags["dagster.run_id"] == run.run_id and tracked.info.status == "FINISHED"
        assert tracked.data.tags["dagster.partition"] == partition and tracked.data.tags["dagster.asset"] == step
    curve = client.get_metric_history(named["finetuned_recommender"].value, "validation")
    assert len(curve) > 1 and [m.step for m in curve] == list(range(1, len(curve) + 1))
    assert len(client.get_metric_history(named["pretrained_encoder"].value, "link")) > 1
    evaluation = client.get_run(named["model_evaluation"].value).data.metrics
    assert any(k.startswith("test/all/") and k.endswith("recall_at_20") for k in evaluation)


def assert_the_api_serves_the_published_night(warehouse) -> None:
    """The read API, over what `recommendations` and `similar_items` published, answers with the tables' rows."""
    client = TestClient(create_app(published_dir(warehouse), refresh_seconds=0))
    conn = connect(warehouse, read_only=True)
    user, *_ = rows(conn, "SELECT min(user_id) FROM serving.recommendations WHERE partition_date = $d", {"d": RUN_DATE})[0]
    expected = [item for (item,) in rows(conn, """SELECT item_id FROM serving.recommendations
                                                   WHERE partition_date = $d AND user_id = $u ORDER BY rank""",
                                         {"d": RUN_DATE, "u": user})]
    item, *_ = rows(conn, "SELECT min(item_id) FROM serving.similar_items WHERE run_date = $d", {"d": RUN_DATE})[0]
    neighbours = [other for (other,) in rows(conn, """SELECT similar_item_id FROM serving.similar_items
                                                       WHERE run_date = $d AND item_id = $i ORDER BY rank""",
                                             {"d": RUN_DATE, "i": item})]
    conn.close()
    answer = client.get(f"/users/{user}/recommendations", params={"k": 100}).json()
    assert answer["night"] == RUN_DATE.isoformat() and not answer["fallback"]
    assert [i["item"] for i in answer["items"]] == expected and all(i["reason"] for i in answer["items"])
    similar = client.get(f"/items/{item}/similar", params={"k": 100}).json()
    assert [i["item"] for i in similar["items"]] == neighbours[:100]


def test_whole_graph_then_another_dataset_and_warehouse(tmp_path):
    """Shop b's ranker is hobbled: the gate must serve the strongest tuned peer instead, and say so."""
    models = tmp_path / "models"
    for name, seed in (("shop-a", 0), ("shop-b", 1)):
        warehouse = tmp_path / f"{name}.duckdb"
        resources = warehouse_resources(warehouse, models, shop(tmp_path, name, seed))
        if name == "shop-b":  # an unreachable tracking server only warns
            resources["tracking"] = TrackingResource(uri="http://127.0.0.1:9")
        pretraining, result = materialize_everything(resources, SMALL if name == "shop-a" else HOBBLED)
        assert result.success
        assert_tracked(pretraining, result, resources["tracking"].uri, reachable=name == "shop-a")
        gate = [c for c in result.get_asset_check_evaluations() if c.check_name == "quality_gate"]
        assert len(gate) == 1
        age = [c for c in result.get_asset_check_evaluations() if c.check_name == "pretrained_age"]
        assert age[0].passed and age[0].metadata["age_days"].value == 3  # the week ended on Saturday 12-25
        assert [c.passed for c in result.get_asset_check_evaluations() if c.check_name == "finite_weights"] == [True]
        [covered] = [c for c in result.get_asset_check_evaluations() if c.check_name == "coverage"]  # standalone
        assert covered.passed and covered.metadata["night"].value == RUN_DATE.isoformat()
        finetuned = result.asset_materializations_for_node("finetuned_recommender")[0].metadata
        image = finetuned["curves_image"].value  # markdown with an embedded PNG
        assert base64.b64decode(image.split("base64,")[1].rstrip(")")).startswith(b"\x89PNG")
        served_policy = result.asset_materializations_for_node("recommendations")[0].metadata["policy"].value
        assert served_policy == finetuned["policy"].value == gate[0].metadata["policy"].value
        assert_the_api_serves_the_published_night(warehouse)
        if name == "shop-b":
            assert not gate[0].passed and gate[0].severity == dg.AssetCheckSeverity.WARN
            assert served_policy == gate[0].metadata["baseline"].value in CLASSIC
            assert "serving" in gate[0].description and served_policy in gate[0].description
        evaluation = result.asset_materializations_for_node("model_evaluation")[0].metadata
        assert evaluation["strongest_peer"].value in {f"{name} (tuned)" for name in CLASSIC}
        assert evaluation["served_over_peer_recall@20"].value == pytest.approx(
            evaluation["served_recall@20"].value / evaluation["strongest_peer_recall@20"].value, abs=1e-3)
        preview = result.asset_materializations_for_node("recommendations")[0].metadata["preview"].value
        assert preview.count("\n") == 1 + 3 * 5, "a header line, then three users with five items each"
        conn = connect(warehouse, read_only=True)
        users_with_history = rows(conn, "SELECT count(DISTINCT user_id) FROM raw.events WHERE ts < $c",
                                  {"c": RUN_DATE + dt.timedelta(days=1)})[0][0]
        served_users = rows(conn, "SELECT count(DISTINCT user_id) FROM serving.recommendations "
                                  "WHERE partition_date = $d", {"d": RUN_DATE})[0][0]
        assert served_users == users_with_history, "everyone with history gets a list"
        assert evaluation["users_without_a_row"].value == 0
        served = rows(conn, "SELECT users FROM eval.metrics WHERE model = $m AND split = 'test' AND slice = 'all' "
                            "AND metric = 'recall' AND k = 20", {"m": SERVED})
        assert served and served[0][0] == evaluation["evaluated_users"].value > 0
        # Reasons name the user's own past purchase (by title), and an attribute it shares, if any.
        anchored = rows(conn, """
            SELECT r.user_id, r.reason, EXISTS (
                SELECT 1 FROM raw.events ev JOIN raw.items i USING (item_id)
                WHERE ev.user_id = r.user_id AND ev.ts < $c AND ev.event_type = 'purchase'
                  AND r.reason LIKE '%' || i.title || '%')
            FROM serving.recommendations r
            WHERE r.partition_date = $d AND (r.reason LIKE 'bought together with %' OR r.reason LIKE 'because you bought %'
                                             OR r.reason LIKE 'shoppers who bought %')
            """, {"d": RUN_DATE, "c": RUN_DATE + dt.timedelta(days=1)})
        assert anchored and all(found for _, _, found in anchored), anchored[:3]
        first = rows(conn, "SELECT user_id, item_id, rank FROM serving.recommendations ORDER BY ALL")
        metric_rows = rows(conn, "SELECT count(*) FROM eval.metrics")[0][0]
        conn.close()
        assert_served_as_ranked_by_the_policy(warehouse, tmp_path / name / "synthetic.yaml", models, served_policy)
        if name == "shop-a":  # the same partition again, from the same inputs: the same table
            # ... even with a second text model's vectors in the warehouse: checkpoints name theirs
            conn = connect(warehouse)
            conn.execute("INSERT INTO features.text_embeddings SELECT text_hash, 'another-model', embedding, now() "
                         "FROM features.text_embeddings")
            conn.close()
            resources = warehouse_resources(warehouse, models, tmp_path / name / "synthetic.yaml")
            assert dg.materialize(MODEL_ASSETS, resources=resources, partition_key=RUN_DATE.isoformat(),
                                  run_config=model_config(SMALL)).success
            conn = connect(warehouse, read_only=True)
            assert rows(conn, "SELECT user_id, item_id, rank FROM serving.recommendations ORDER BY ALL") == first
            assert rows(conn, "SELECT count(*) FROM eval.metrics")[0][0] == metric_rows, "replaced, not added"
            conn.close()
    assert sorted(p.name.split("-")[1] for p in models.iterdir()) == ["a", "b"], "one model folder per warehouse"


def test_training_in_two_gloo_workers_loads_and_serves_like_one_process(tmp_path, capfd, recwarn):
    """Pretraining and fine-tuning in two torchrun workers
    launched through Pipes: the checkpoints load and serve as in-process ones do, and the workers
    print no DDP warning (find_unused_parameters=True printed one per worker and run)."""
    models = tmp_path / "models"
    resources = warehouse_resources(tmp_path / "w.duckdb", models, shop(tmp_path, "shop", 0))
    two_workers = {"ops": {**SMALL["ops"], **{step: {"config": {**SMALL["ops"][step]["config"], "world_size": 2}}
                                              for step in ("pretrained_encoder", "finetuned_recommender")}}}
    last = RUN_DATE + dt.timedelta(days=9)
    assert dg.materialize([raw_events], resources=resources, tags={
        "dagster/asset_partition_range_start": START.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat()}).success
    assert dg.materialize([raw_items, raw_users, item_text_embeddings], resources=resources).success
    pretraining = pretrain_the_week(resources, two_workers)
    result = dg.materialize(MODEL_ASSETS, resources=resources, partition_key=RUN_DATE.isoformat(),
                            run_config=model_config(two_workers))
    assert pretraining.success and result.success
    pretrained = pretraining.asset_materializations_for_node("pretrained_encoder")[0].metadata
    assert pretrained["world_size"].value == 2 and pretrained["epochs"].value == 3
    finetuned = result.asset_materializations_for_node("finetuned_recommender")[0].metadata
    assert finetuned["world_size"].value == 2 and 1 <= finetuned["best_epoch"].value <= 6
    assert finetuned["graph_model_validation"].value["recall@20"] > 0
    assert result.asset_materializations_for_node("recommendations")[0].metadata["users"].value > 0
    printed = capfd.readouterr()
    assert "reducer.cpp" not in printed.err + printed.out, "a DDP warning from the workers"
    assert not [w for w in recwarn if "expected_writer_count" in str(w.message)], "Dagster's Pipes preview warning"
