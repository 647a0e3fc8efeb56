"""Runs killed with SIGKILL while they hold or wait for the warehouse slot do not block the next run."""

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
from unirec_dagster.slots import free_stuck_slots, inspect_pools

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def start_run(env: dict, partitions: str) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                             "unirec_dagster.definitions", "--select", "raw_events", "--partition-range", partitions],
                            env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(condition, what: str, runs: list[subprocess.Popen], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline and all(r.poll() is None for r in runs), what
        time.sleep(0.5)


def test_killed_runs_free_their_slot_and_queue_place_and_the_next_run_completes(tmp_path, monkeypatch):
    """kill -9 of the run holding the warehouse slot and of a run queued behind it: freeing only the
    holder would hand the slot to the dead queued run, and every later run would wait forever."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "UNIREC_DUCKDB_PATH": str(tmp_path / "w.duckdb")}
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        def pool():
            return instance.event_log_storage.get_concurrency_info("duckdb_warehouse")

        holder = start_run(env, "2010-12-01...2011-01-15")
        wait_for(lambda: pool().claimed_slots, "the first run never claimed its slot", [holder])
        os.killpg(holder.pid, signal.SIGSTOP)  # frozen with the slot, so that it cannot finish first
        queued = start_run(env, "2011-01-04...2011-01-05")
        def queued_behind() -> bool:
            holders = {c.run_id for c in pool().claimed_slots}
            return any(p.run_id not in holders for p in pool().pending_steps)

        wait_for(queued_behind, "the second run never queued for the slot", [holder, queued])
        for run in (holder, queued):
            os.killpg(run.pid, signal.SIGKILL)  # the run and its step worker, as kill -9 of the group
            run.wait()
        time.sleep(1)

        # Inside the grace period both are named, nothing is freed.
        stuck, waiting = inspect_pools(instance, grace_seconds=3600)
        assert not stuck and {w.holds for w in waiting} == {True, False}
        assert all("gone" in w.why for w in waiting)
        dead_runs = {w.run_id for w in waiting}
        assert len(dead_runs) == 2 and len(pool().claimed_slots) == 1

        freed = free_stuck_slots(instance, grace_seconds=0)
        assert {f.run_id for f in freed} == dead_runs
        assert not pool().claimed_slots and not pool().pending_steps
        assert all(instance.get_run_by_id(r).status == dg.DagsterRunStatus.FAILURE for r in dead_runs)
        assert inspect_pools(instance, grace_seconds=0) == ([], [])
        result = dg.materialize([raw_events], instance=instance, partition_key="2010-12-01",
                                resources=warehouse_resources(tmp_path / "w.duckdb", tmp_path / "models"))
        assert result.success
