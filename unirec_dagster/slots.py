"""Free concurrency-pool slots held by runs that will never give them back.

A run killed with SIGKILL (or on a machine that lost power) stays STARTED in the instance, and the
`duckdb_warehouse` slot it claimed stays claimed: every later writer waits forever ("Step blocked
by limit for pool duckdb_warehouse"). This module frees the slots of runs that have ended, and of
runs whose processes, as their own events recorded them, are all gone from this machine and have
been silent for a grace period; such runs are marked failed. It runs as the sensor
`free_stuck_slots` under `dagster dev` (the daemon), and before every `make run`:

    python -m unirec_dagster.slots            # report and free
    python -m unirec_dagster.slots --dry-run  # report only

On a cluster, Dagster's run monitoring (dagster.yaml `run_monitoring`, with a run launcher that
checks run-worker health) does the same for runs on other hosts.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import dagster as dg

GRACE_SECONDS = 60  # a run whose processes are gone but that logged within this is left alone
ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class StuckSlot:
    pool: str
    run_id: str
    step_key: str
    why: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _dead_run_reason(instance: dg.DagsterInstance, run: dg.DagsterRun, grace_seconds: float) -> str | None:
    """Why `run` holds its slot for nothing, or None when it may still be working."""
    if run.status in ENDED:
        return f"the run ended ({run.status.value}) without freeing its slot"
    records = instance.all_logs(run.run_id)
    pids = {r.dagster_event.pid for r in records if r.dagster_event and r.dagster_event.pid}
    last = max((r.timestamp for r in records), default=0.0)
    if pids and not any(_alive(pid) for pid in pids) and time.time() - last > grace_seconds:
        return (f"its processes {sorted(pids)} are gone and it has logged nothing for "
                f"{time.time() - last:.0f}s (killed?)")
    return None


def find_stuck_slots(instance: dg.DagsterInstance, grace_seconds: float = GRACE_SECONDS) -> list[StuckSlot]:
    storage = instance.event_log_storage
    stuck = []
    for pool in sorted(storage.get_concurrency_keys()):
        for claimed in storage.get_concurrency_info(pool).claimed_slots:
            run = instance.get_run_by_id(claimed.run_id)
            why = "the run no longer exists" if run is None else _dead_run_reason(instance, run, grace_seconds)
            if why:
                stuck.append(StuckSlot(pool, claimed.run_id, claimed.step_key, why))
    return stuck


def free_stuck_slots(instance: dg.DagsterInstance, dry_run: bool = False, log=print,
                     grace_seconds: float = GRACE_SECONDS) -> list[StuckSlot]:
    """Free the slots of dead runs (and mark those runs failed); returns what was found."""
    stuck = find_stuck_slots(instance, grace_seconds)
    for slot in stuck:
        log(f"pool {slot.pool}: run {slot.run_id} step {slot.step_key} holds a slot: {slot.why}"
            + ("" if dry_run else "; freeing it"))
        if dry_run:
            continue
        run = instance.get_run_by_id(slot.run_id)
        if run is not None and run.status not in ENDED:
            instance.report_run_failed(run, f"unirec_dagster.slots: {slot.why}")
        instance.event_log_storage.free_concurrency_slots_for_run(slot.run_id)
    return stuck


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="report the stuck slots, free nothing")
    args = parser.parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        stuck = free_stuck_slots(instance, args.dry_run)
    if not stuck:
        print("no stuck concurrency slots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
