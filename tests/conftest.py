from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_duckdb import DuckDBResource

from unirec_dagster import settings
from unirec_dagster.datasets import load_spec
from unirec_dagster.defs.resources import (
    ComputeResource,
    DatasetResource,
    ModelStoreResource,
    TextModelResource,
    TrackingResource,
)
from unirec_dagster.warehouse import connect

SAMPLE_SPEC_PATH = settings.DEFAULT_DATASET
SAMPLE_SPEC = load_spec(SAMPLE_SPEC_PATH)


def warehouse_resources(warehouse: Path, models: Path, spec_path: Path = SAMPLE_SPEC_PATH) -> dict:
    """The Dagster resources of a test: its own warehouse file and models folder, a chosen dataset."""
    return {"duckdb": DuckDBResource(database=str(warehouse)), "dataset": DatasetResource(spec_path=str(spec_path)),
            "model_store": ModelStoreResource(root=str(models)), "pipes_subprocess_client": dg.PipesSubprocessClient(),
            "text_model": TextModelResource(), "compute": ComputeResource(device="cpu"),
            "tracking": TrackingResource(uri=f"sqlite:///{models.parent / 'mlflow.db'}",
                                         artifact_root=(models.parent / "mlflow-artifacts").as_uri())}


def write_spec(directory: Path, events: dict, **extra) -> Path:
    """Write a dataset spec with sensible defaults for the keys a test does not care about."""
    base = {
        "path": "{date}.csv",
        "start_date": "2024-01-01",
        "user_id": "user",
        "item_id": "item",
        "timestamp": {"column": "ts", "format": "%Y-%m-%d %H:%M:%S"},
        "event_type": "purchase",
        "positive_event_type": "purchase",
    }
    # Test files are mostly dirt on purpose: only days over 90% rejected are refused unless a test says otherwise.
    spec = {"name": "test", "events": {**base, **events}, "max_reject_rate": 0.9, **extra}
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def conn(tmp_path):
    connection = connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


@pytest.fixture
def load(tmp_path):
    def _load(events: dict, **extra):
        return load_spec(write_spec(tmp_path, events, **extra))

    return _load
