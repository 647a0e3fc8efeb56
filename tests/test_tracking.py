"""Experiment tracking on a real MLflow store: what a step logs, tracking off, and a store that
cannot be reached (the step goes on)."""

import time

from mlflow.tracking import MlflowClient

from unirec_dagster import settings
from unirec_dagster.defs.resources import TrackingResource, default_resources
from unirec_dagster.tracking import KIND_TAG, MODEL_TRAINING, TrackedRun, history_curves, log_run


def test_a_run_keeps_its_curves_parameters_tables_and_tags(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    history = [{"epoch": 1, "softmax": 5.0, "validation": 0.10}, {"epoch": 2, "softmax": 4.5, "validation": 0.12},
               {"final_epochs": 2}]
    warnings: list[str] = []
    ref = log_run(uri, TrackedRun("fine-tuning 2011-11-24", params={"lr": 0.005, "encoder": {"dim": 64}},
                                  curves=history_curves(history) | {"ranker_cv_ndcg@20": [0.2, 0.21, 0.22]},
                                  metrics={"model_recall@20": 0.1177}, tables={"gate.json": '{"policy": "x"}'},
                                  tags={"dagster.run_id": "abc", "dagster.partition": "2011-11-24"}),
                  warnings.append, artifact_root=(tmp_path / "artifacts").as_uri())
    assert ref is not None and not warnings, warnings
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(ref.run_id)
    assert run.info.run_name == "fine-tuning 2011-11-24" and run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.005", "encoder.dim": "64"}
    assert run.data.tags["dagster.run_id"] == "abc" and run.data.metrics["model_recall_at_20"] == 0.1177
    assert [(m.step, m.value) for m in client.get_metric_history(ref.run_id, "validation")] == [(1, 0.10), (2, 0.12)]
    assert len(client.get_metric_history(ref.run_id, "ranker_cv_ndcg_at_20")) == 3
    assert client.download_artifacts(ref.run_id, "gate.json", str(tmp_path))
    assert "make mlflow" in ref.link and ref.run_id in ref.link
    # MLflow's UI opens the experiment on its training runs, not its GenAI traces
    assert client.get_experiment(ref.experiment_id).tags[KIND_TAG] == MODEL_TRAINING


def test_an_unreachable_store_warns_fast_and_returns_nothing():
    warnings: list[str] = []
    started = time.perf_counter()
    assert log_run("http://127.0.0.1:9", TrackedRun("pretraining"), warnings.append) is None
    assert time.perf_counter() - started < 10, "no retries with backoff"
    assert len(warnings) == 1 and "experiment tracking at http://127.0.0.1:9 failed" in warnings[0]


def test_tracking_off_logs_nothing(tmp_path):
    store = tmp_path / "mlflow.db"
    off = TrackingResource(enabled=False, uri=f"sqlite:///{store}")
    assert off.record(None, TrackedRun("pretraining")) == {}  # type: ignore[arg-type]  # no context is read
    assert not store.exists()


def test_the_experiment_store_lives_beside_its_warehouse(tmp_path, monkeypatch):
    monkeypatch.delenv(settings.MLFLOW_URI_ENV, raising=False)
    stores = set()
    for name in ("shop.duckdb", "films.duckdb"):
        monkeypatch.setenv(settings.DUCKDB_PATH_ENV, str(tmp_path / name))
        tracking = default_resources()["tracking"]
        assert tracking.uri == settings.mlflow_uri() == f"sqlite:///{tmp_path / name.replace('.duckdb', '.mlflow.db')}"
        assert tracking.artifact_root == (tmp_path / name.replace(".duckdb", ".mlflow-artifacts")).as_uri()
        stores.add(tracking.uri)
    assert len(stores) == 2, "two warehouses, two experiment stores"
    monkeypatch.setenv(settings.MLFLOW_URI_ENV, "http://mlflow:5000")
    assert settings.mlflow_uri() == "http://mlflow:5000"
