"""Free concurrency-pool slots held by runs that will never give them back.

A run killed with SIGKILL (or on a machine that lost power) stays STARTED in the instance, and the
`duckdb_warehouse` slot it claimed stays claimed: every later writer waits forever ("Step blocked
by limit for pool duckdb_warehouse"). This module frees the slots of runs that have ended, and of
runs whose processes, as their own events recorded them, are all gone from this machine and have
been silent for a grace period; such runs are marked failed. It runs as the sensor
`free_stuck_slots` under `dagster dev` (the daemon), and before every `make run`:

    python -m unirec_dagster.slots            # report and free
    python -m unirec_dagster.slots --dry-run  # report only

A process id only means something on the machine that launched the run: under another run
launcher (the K8s one of deploy/, runs in their own pods) the process check is skipped, Dagster's
run monitoring (dagster.yaml `run_monitoring`, the launcher checks each run worker's health) marks a
run whose pod died as failed, and this module then frees the places of such ended runs.
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
    holds: bool = True          # a claimed slot; False: a step queued for one (pending or just assigned)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass
class Verdict:
    dead: str | None = None      # why the run will never use or free its place
    waiting: str | None = None   # why it looks dead but is still inside the grace period


def runs_on_this_machine(instance: dg.DagsterInstance) -> bool:
    """Whether the instance launches runs as local processes, so that a run's process ids mean
    something here. Under the K8s run launcher (deploy/) runs live in other pods: there only runs
    that ended free their places, and Dagster's run monitoring, which asks the launcher about each
    run's worker, is what marks a run whose pod died as failed."""
    return isinstance(instance.run_launcher, dg.DefaultRunLauncher)


def _judge_run(instance: dg.DagsterInstance, run: dg.DagsterRun | None, grace_seconds: float) -> Verdict:
    if run is None:
        return Verdict(dead="the run no longer exists")
    if run.status in ENDED:
        return Verdict(dead=f"the run ended ({run.status.value}) without leaving the pool")
    if not runs_on_this_machine(instance):
        return Verdict()
    records = instance.all_logs(run.run_id)
    pids = {r.dagster_event.pid for r in records if r.dagster_event and r.dagster_event.pid}
    if not pids or any(_alive(pid) for pid in pids):
        return Verdict()
    silent = time.time() - max((r.timestamp for r in records), default=0.0)
    if silent > grace_seconds:
        return Verdict(dead=f"its processes {sorted(pids)} are gone and it has logged nothing for {silent:.0f}s "
                            f"(killed?)")
    return Verdict(waiting=f"its processes {sorted(pids)} are gone; freed after {grace_seconds - silent:.0f}s more "
                           f"of silence")


def inspect_pools(instance: dg.DagsterInstance,
                  grace_seconds: float = GRACE_SECONDS) -> tuple[list[StuckSlot], list[StuckSlot]]:
    """(stuck, waiting): the places in every pool (claimed slots, and steps queued for one) of runs
    that will never use or free them, and those of runs that look dead but are inside the grace period.
    A dead queued run matters as much as a dead holder: freeing the holder hands the slot to the
    first queued step, and a dead one never gives it back."""
    storage = instance.event_log_storage
    stuck, waiting = [], []
    verdicts: dict[str, Verdict] = {}
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        claimed = {(c.run_id, c.step_key) for c in info.claimed_slots}
        places = ([(run_id, step_key, True) for run_id, step_key in sorted(claimed)]
                  + [(p.run_id, p.step_key, False) for p in info.pending_steps if (p.run_id, p.step_key) not in claimed])
        for run_id, step_key, holds in places:
            if run_id not in verdicts:
                verdicts[run_id] = _judge_run(instance, instance.get_run_by_id(run_id), grace_seconds)
            verdict = verdicts[run_id]
            if verdict.dead:
                stuck.append(StuckSlot(pool, run_id, step_key, verdict.dead, holds))
            elif verdict.waiting:
                waiting.append(StuckSlot(pool, run_id, step_key, verdict.waiting, holds))
    return stuck, waiting


def _describe(slot: StuckSlot) -> str:
    place = "holds a slot" if slot.holds else "is queued for a slot"
    return f"pool {slot.pool}: run {slot.run_id} step {slot.step_key} {place}: {slot.why}"


def free_stuck_slots(instance: dg.DagsterInstance, dry_run: bool = False, log=print,
                     grace_seconds: float = GRACE_SECONDS) -> list[StuckSlot]:
    """Free the slots and queue places of dead runs (and mark those runs failed); returns what was
    found. Runs inside the grace period are named, not freed."""
    stuck, waiting = inspect_pools(instance, grace_seconds)
    for slot in waiting:
        log(_describe(slot) + "; waiting")
    freed: set[str] = set()
    for slot in stuck:
        log(_describe(slot) + ("" if dry_run else "; freeing it"))
        if dry_run or slot.run_id in freed:
            continue
        run = instance.get_run_by_id(slot.run_id)
        if run is not None and run.status not in ENDED:
            instance.report_run_failed(run, f"unirec_dagster.slots: {slot.why}")
        # Frees its claimed slots and removes its queued steps; Dagster then assigns the freed slots.
        instance.event_log_storage.free_concurrency_slots_for_run(slot.run_id)
        freed.add(slot.run_id)
    return stuck


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="report the stuck slots, free nothing")
    args = parser.parse_args(argv)
    reported = []

    def say(line: str) -> None:
        print(line)
        reported.append(line)

    with dg.DagsterInstance.get() as instance:
        free_stuck_slots(instance, args.dry_run, log=say)
    if not reported:
        print("no stuck concurrency slots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
