"""The whole asset graph materialized by Dagster on two small synthetic shops, one after the
other, with the same models folder: switching the dataset and the warehouse needs nothing by hand."""

import datetime as dt

import dagster as dg
import yaml

from unirec_dagster.defs.evaluation import model_evaluation
from unirec_dagster.defs.features import item_text_embeddings
from unirec_dagster.defs.graph import knowledge_graph
from unirec_dagster.defs.ingest import raw_events, raw_items, raw_users
from unirec_dagster.defs.serving import recommendations, similar_items
from unirec_dagster.defs.training import finetuned_recommender, pretrained_encoder
from unirec_dagster.synthetic import generate, write_dataset
from unirec_dagster.training.steps import SERVED
from unirec_dagster.warehouse import connect, rows
from tests.conftest import warehouse_resources

START, RUN_DATE = dt.date(2010, 12, 1), dt.date(2010, 12, 28)  # inside the sample's partition calendar
MODEL_ASSETS = [knowledge_graph, pretrained_encoder, finetuned_recommender, recommendations, model_evaluation,
                similar_items]
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


def materialize_everything(resources: dict) -> dg.ExecuteInProcessResult:
    last = RUN_DATE + dt.timedelta(days=9)
    assert dg.materialize([raw_events], resources=resources, tags={
        "dagster/asset_partition_range_start": START.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat()}).success
    assert dg.materialize([raw_items, raw_users, item_text_embeddings], resources=resources).success
    return dg.materialize(MODEL_ASSETS, resources=resources, partition_key=RUN_DATE.isoformat(), run_config=SMALL)


def test_whole_graph_then_another_dataset_and_warehouse(tmp_path):
    models = tmp_path / "models"
    for name, seed in (("shop-a", 0), ("shop-b", 1)):
        warehouse = tmp_path / f"{name}.duckdb"
        result = materialize_everything(warehouse_resources(warehouse, models, shop(tmp_path, name, seed)))
        assert result.success
        gate = [c for c in result.get_asset_check_evaluations() if c.check_name == "quality_gate"]
        assert len(gate) == 1
        evaluation = result.asset_materializations_for_node("model_evaluation")[0].metadata
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
            WHERE r.partition_date = $d AND (r.reason LIKE 'bought together with %' OR r.reason LIKE 'because you bought %')
            """, {"d": RUN_DATE, "c": RUN_DATE + dt.timedelta(days=1)})
        assert anchored and all(found for _, _, found in anchored), anchored[:3]
        first = rows(conn, "SELECT user_id, item_id, rank FROM serving.recommendations ORDER BY ALL")
        metric_rows = rows(conn, "SELECT count(*) FROM eval.metrics")[0][0]
        conn.close()
        if name == "shop-a":  # the same partition again, from the same inputs: the same table
            resources = warehouse_resources(warehouse, models, tmp_path / name / "synthetic.yaml")
            assert dg.materialize(MODEL_ASSETS, resources=resources, partition_key=RUN_DATE.isoformat(),
                                  run_config=SMALL).success
            conn = connect(warehouse, read_only=True)
            assert rows(conn, "SELECT user_id, item_id, rank FROM serving.recommendations ORDER BY ALL") == first
            assert rows(conn, "SELECT count(*) FROM eval.metrics")[0][0] == metric_rows, "replaced, not added"
            conn.close()
    assert sorted(p.name.split("-")[1] for p in models.iterdir()) == ["a", "b"], "one model folder per warehouse"


def test_training_in_two_gloo_workers_loads_and_serves_like_one_process(tmp_path):
    """Pretraining and fine-tuning in two torchrun workers
    launched through Pipes: the checkpoints load and serve as in-process ones do."""
    models = tmp_path / "models"
    resources = warehouse_resources(tmp_path / "w.duckdb", models, shop(tmp_path, "shop", 0))
    two_workers = {"ops": {**SMALL["ops"], **{step: {"config": {**SMALL["ops"][step]["config"], "world_size": 2}}
                                              for step in ("pretrained_encoder", "finetuned_recommender")}}}
    last = RUN_DATE + dt.timedelta(days=9)
    assert dg.materialize([raw_events], resources=resources, tags={
        "dagster/asset_partition_range_start": START.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat()}).success
    assert dg.materialize([raw_items, raw_users, item_text_embeddings], resources=resources).success
    result = dg.materialize(MODEL_ASSETS, resources=resources, partition_key=RUN_DATE.isoformat(), run_config=two_workers)
    assert result.success
    pretrained = result.asset_materializations_for_node("pretrained_encoder")[0].metadata
    assert pretrained["world_size"].value == 2 and pretrained["epochs"].value == 3
    finetuned = result.asset_materializations_for_node("finetuned_recommender")[0].metadata
    assert finetuned["world_size"].value == 2 and 1 <= finetuned["best_epoch"].value <= 6
    assert finetuned["graph_model_validation"].value["recall@20"] > 0
    assert result.asset_materializations_for_node("recommendations")[0].metadata["users"].value > 0
