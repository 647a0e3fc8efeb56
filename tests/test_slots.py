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
from unirec_dagster.defs.schedules import free_stuck_slots_sensor
from unirec_dagster.slots import inspect_pools, is_a_step_worker

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


def kill_a_holder_and_a_queued_run(instance: dg.DagsterInstance, env: dict) -> set[str]:
    """kill -9 of the run holding the warehouse slot and of a run queued behind it; their run ids.
    Freeing only the holder would hand the slot to the dead queued run, and every later run would
    wait forever."""
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
    dead = {c.run_id for c in pool().claimed_slots} | {p.run_id for p in pool().pending_steps}
    assert len(dead) == 2 and len(pool().claimed_slots) == 1
    return dead


def assert_freed(instance: dg.DagsterInstance, dead_runs: set[str]) -> None:
    info = instance.event_log_storage.get_concurrency_info("duckdb_warehouse")
    assert not info.claimed_slots and not info.pending_steps
    assert all(instance.get_run_by_id(r).status == dg.DagsterRunStatus.FAILURE for r in dead_runs)
    assert inspect_pools(instance) == []


@pytest.fixture
def instance_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return {**os.environ, "DAGSTER_HOME": str(home), "UNIREC_DUCKDB_PATH": str(tmp_path / "w.duckdb")}


def test_after_a_kill_9_the_next_cli_run_completes_without_the_daemon(instance_home):
    """The third `dagster asset materialize` frees the dead runs' places when its code location
    loads (their processes are provably gone) and completes, nobody running anything by hand."""
    with dg.DagsterInstance.get() as instance:
        dead_runs = kill_a_holder_and_a_queued_run(instance, instance_home)
        stuck = inspect_pools(instance)  # known dead at once: no grace period on this machine
        assert {s.run_id for s in stuck} == dead_runs and {s.holds for s in stuck} == {True, False}
        assert all("gone from this machine" in s.why for s in stuck)

        # A run queued behind the dead ones would wait forever: the timeout fails the test then.
        third = subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                                "unirec_dagster.definitions", "--select", "raw_events", "--partition", "2010-12-02"],
                               env=instance_home, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert third.returncode == 0, third.stderr[-2000:]
        for run_id in dead_runs:  # the log says which dead run was freed, and why
            assert f"run {run_id}" in third.stderr and "gone from this machine" in third.stderr
        assert_freed(instance, dead_runs)


def test_under_the_daemon_the_sensor_frees_a_killed_run(instance_home, tmp_path):
    with dg.DagsterInstance.get() as instance:
        dead_runs = kill_a_holder_and_a_queued_run(instance, instance_home)
        result = free_stuck_slots_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SkipReason) and "freed 2 stuck slot(s)" in result.skip_message
        assert_freed(instance, dead_runs)
        result = dg.materialize([raw_events], instance=instance, partition_key="2010-12-01",
                                resources=warehouse_resources(tmp_path / "w.duckdb", tmp_path / "models"))
        assert result.success


def test_only_the_process_that_holds_a_run_frees_dead_runs_when_the_code_loads():
    """Each step process loads the code location again; the run's own process has already checked."""
    assert not is_a_step_worker(["dagster", "asset", "materialize", "-m", "unirec_dagster.definitions"])
    assert not is_a_step_worker(["dagster", "api", "execute_run", "{}"])
    assert is_a_step_worker(["dagster", "api", "execute_step", "{}"])
