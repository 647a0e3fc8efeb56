"""Experiment tracking on MLflow: one MLflow run per materialization of a training or evaluation
asset, with its parameters, its curves (one point per epoch or boosting round), its final figures,
its tables as artifacts, and tags that lead back to the Dagster run, asset and partition (the
Dagster metadata names the MLflow run in turn).

The store is a tracking URI: by default a SQLite file under the data folder (`make mlflow` opens
its UI), on a cluster a tracking server (`UNIREC_MLFLOW_URI=http://mlflow:5000`). Tracking never
breaks a run: when the store cannot be reached or refuses a write, the step warns and goes on.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EXPERIMENT = "unirec"
# MLflow 3's UI opens an experiment in its GenAI (traces) view unless the experiment says it holds
# model training runs; with this tag it opens on the runs table and their charts.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
MAX_PARAM_LENGTH = 500          # MLflow refuses longer parameter values

# An unreachable server must fail fast, not after MLflow's default retries with backoff (minutes).
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@dataclass
class TrackedRun:
    """What one step reports."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)        # nested dicts are flattened with dots
    curves: dict[str, list[float]] = field(default_factory=dict)  # metric name -> value per step (1, 2, ...)
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)        # artifact file name -> text (markdown, JSON)
    tags: dict[str, str] = field(default_factory=dict)


def key(name: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, _ - . space : /)."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def history_curves(history: list[dict], prefix: str = "") -> dict[str, list[float]]:
    """A checkpoint's per-epoch rows ({"epoch": n, "link": ..., "validation": ...}) as curves."""
    curves: dict[str, list[float]] = {}
    for row in history:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                curves.setdefault(f"{prefix}{key}", []).append(float(value))
    return curves


def log_run(uri: str, run: TrackedRun, warn: Callable[[str], None], experiment: str = EXPERIMENT,
            artifact_root: str | None = None) -> TrackedRef | None:
    """Record `run` in the MLflow store at `uri`; where it is, or None (with a warning) on any failure."""
    saved = {k: os.environ.get(k) for k in _HTTP_ENV}
    os.environ.update({k: saved[k] or v for k, v in _HTTP_ENV.items()})
    for noisy in ("alembic", "mlflow"):  # schema migrations and store notices on the first write
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment, artifact_location=artifact_root, tags={KIND_TAG: MODEL_TRAINING})
        if found and found.tags.get(KIND_TAG) != MODEL_TRAINING:
            client.set_experiment_tag(experiment_id, KIND_TAG, MODEL_TRAINING)
        started = client.create_run(experiment_id, run_name=run.name, tags=run.tags)
        run_id = started.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(key(k), float(v), now, 0) for k, v in run.metrics.items() if v is not None]
        metrics += [Metric(key(k), float(v), now, step) for k, values in run.curves.items()
                    for step, v in enumerate(values, start=1)]
        params = [Param(key(k), v) for k, v in flatten(run.params).items()]
        for start in range(0, len(metrics), 1000):  # the store's limits per batch
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start:start + 100])
        for path, text in run.tables.items():
            client.log_text(run_id, text, path)
        client.set_terminated(run_id)
        return TrackedRef(uri, experiment_id, run_id)
    except Exception as error:  # noqa: BLE001 - tracking must never fail the step it describes
        warn(f"experiment tracking at {uri} failed, the step goes on without it: {type(error).__name__}: "
             f"{str(error).splitlines()[0][:300] if str(error) else ''}")
        return None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class TrackedRef:
    uri: str
    experiment_id: str
    run_id: str

    @property
    def link(self) -> str:
        """Where the run is seen: its page on a tracking server, or how to open a local store's UI."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"make mlflow (mlflow ui --backend-store-uri {self.uri}): experiment {EXPERIMENT}, run {self.run_id}"
