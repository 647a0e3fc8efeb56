"""Run-time settings read from environment variables: the one place that knows their names.

Defaults live under the project's `data/` folder; a relative path given in a variable is read
from the current working directory, as any command-line tool would.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = PROJECT_ROOT / "data" / "datasets" / "sample.yaml"
DEFAULT_DUCKDB_PATH = PROJECT_ROOT / "data" / "warehouse.duckdb"
DEFAULT_MODELS_DIR = PROJECT_ROOT / "data" / "models"


DATASET_ENV = "UNIREC_DATASET"
DUCKDB_PATH_ENV = "UNIREC_DUCKDB_PATH"
DUCKDB_MEMORY_LIMIT_ENV = "UNIREC_DUCKDB_MEMORY_LIMIT"
MODELS_DIR_ENV = "UNIREC_MODELS_DIR"
DEVICE_ENV = "UNIREC_DEVICE"
TEXT_MODEL_ENV = "UNIREC_TEXT_MODEL"
MLFLOW_URI_ENV = "UNIREC_MLFLOW_URI"            # a tracking server, or another store
TRACKING_ENV = "UNIREC_TRACKING"                # "off" turns experiment tracking off
SERVING_SHARDS_ENV = "UNIREC_SERVING_SHARDS"    # worker processes the nightly ranking is split over
# DuckDB would otherwise take 80% of RAM; beyond this it spills to disk next to the database.
DEFAULT_DUCKDB_MEMORY_LIMIT = "3GB"


def _resolve(value: str | None, default: Path) -> Path:
    if not value:
        return default
    path = Path(value).expanduser()
    return path.resolve()


def dataset_spec_path() -> Path:
    """The dataset spec selected by UNIREC_DATASET (default: the embedded sample)."""
    return _resolve(os.environ.get(DATASET_ENV), DEFAULT_DATASET)


def duckdb_path() -> Path:
    """The warehouse file selected by UNIREC_DUCKDB_PATH (default: data/warehouse.duckdb)."""
    return _resolve(os.environ.get(DUCKDB_PATH_ENV), DEFAULT_DUCKDB_PATH)


def duckdb_memory_limit() -> str:
    """DuckDB's memory_limit (UNIREC_DUCKDB_MEMORY_LIMIT, default 3GB), e.g. '3GB' or '512MB'."""
    return os.environ.get(DUCKDB_MEMORY_LIMIT_ENV) or DEFAULT_DUCKDB_MEMORY_LIMIT


def local_mlflow_store(warehouse: Path | None = None) -> tuple[str, str]:
    """(tracking URI, artifact root URI) of the SQLite experiment store beside a warehouse file
    (default: UNIREC_DUCKDB_PATH's): data/warehouse.duckdb keeps its runs in data/warehouse.mlflow.db
    and data/warehouse.mlflow-artifacts/, so two warehouses never share one experiment store."""
    path = warehouse or duckdb_path()
    return (f"sqlite:///{path.with_name(path.stem + '.mlflow.db')}",
            path.with_name(path.stem + ".mlflow-artifacts").resolve().as_uri())


def mlflow_uri() -> str:
    """The tracking store: UNIREC_MLFLOW_URI (a server, say), else the SQLite store beside the warehouse."""
    return os.environ.get(MLFLOW_URI_ENV) or local_mlflow_store()[0]


def models_dir() -> Path:
    """Where checkpoints are written (UNIREC_MODELS_DIR, default data/models)."""
    return _resolve(os.environ.get(MODELS_DIR_ENV), DEFAULT_MODELS_DIR)



NIGHTLY_DEADLINE_ENV = "UNIREC_NIGHTLY_DEADLINE_HOUR"
DEFAULT_NIGHTLY_DEADLINE_HOUR = 6


def nightly_deadline_hour() -> int:
    """The hour (UTC, 3-23) until which the nightly run waits for yesterday's file
    (UNIREC_NIGHTLY_DEADLINE_HOUR, default 6): it runs at 02:00 when the file is there, else on the
    first hourly tick after it lands, at the latest at the deadline, from the data it has."""
    value = os.environ.get(NIGHTLY_DEADLINE_ENV)
    if not value:
        return DEFAULT_NIGHTLY_DEADLINE_HOUR
    if not value.isdigit() or not 3 <= int(value) <= 23:
        raise ValueError(f"{NIGHTLY_DEADLINE_ENV}={value!r}: give an hour from 3 to 23 (the nightly starts at 02:00)")
    return int(value)


API_HOST_ENV = "UNIREC_API_HOST"
API_PORT_ENV = "UNIREC_API_PORT"
API_URL_ENV = "UNIREC_API_URL"
API_REFRESH_ENV = "UNIREC_API_REFRESH_SECONDS"


def api_host() -> str:
    """The read API's address (UNIREC_API_HOST, default 127.0.0.1; 0.0.0.0 in a pod)."""
    return os.environ.get(API_HOST_ENV) or "127.0.0.1"


def api_url() -> str | None:
    """Where the shop reaches the read API (UNIREC_API_URL), linked from the recommendations asset."""
    return os.environ.get(API_URL_ENV) or None


def api_port() -> int:
    """The read API's port on 127.0.0.1 (UNIREC_API_PORT, default 8000)."""
    value = os.environ.get(API_PORT_ENV) or "8000"
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"{API_PORT_ENV}={value!r}: give a port number from 1 to 65535")
    return int(value)


def api_refresh_seconds() -> float:
    """How often the read API looks for a newer published night (UNIREC_API_REFRESH_SECONDS, default 30)."""
    value = os.environ.get(API_REFRESH_ENV) or "30"
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"{API_REFRESH_ENV}={value!r}: give a positive number of seconds")
    return seconds


def serving_shards() -> int:
    """Worker processes the nightly recommendations rank their users in (UNIREC_SERVING_SHARDS, default 1)."""
    value = os.environ.get(SERVING_SHARDS_ENV) or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{SERVING_SHARDS_ENV}={value!r}: expected a whole number of processes, 1 or more")
    return int(value)
