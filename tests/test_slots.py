"""A run killed with SIGKILL while it holds the warehouse slot does not block the next run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import warehouse_resources
from unirec_dagster.defs.ingest import raw_events
from unirec_dagster.slots import free_stuck_slots

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_a_killed_run_frees_its_slot_and_the_next_run_completes(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "UNIREC_DUCKDB_PATH": str(tmp_path / "w.duckdb")}
    run = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                            "unirec_dagster.definitions", "--select", "raw_events",
                            "--partition-range", "2010-12-01...2011-01-15"],
                           env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        deadline = time.time() + 120
        while not instance.event_log_storage.get_concurrency_info("duckdb_warehouse").claimed_slots:
            assert time.time() < deadline and run.poll() is None, "the run never claimed its slot"
            time.sleep(0.5)
        os.killpg(run.pid, signal.SIGKILL)  # the run and its step worker, as kill -9 of the group
        run.wait()
        time.sleep(1)
        freed = free_stuck_slots(instance, grace_seconds=0)
        assert len(freed) == 1 and "gone" in freed[0].why
        assert not instance.event_log_storage.get_concurrency_info("duckdb_warehouse").claimed_slots
        assert instance.get_run_by_id(freed[0].run_id).status == dg.DagsterRunStatus.FAILURE
        result = dg.materialize([raw_events], instance=instance, partition_key="2010-12-01",
                                resources=warehouse_resources(tmp_path / "w.duckdb", tmp_path / "models"))
        assert result.success
