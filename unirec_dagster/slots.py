"""Free concurrency-pool slots held by runs that will never give them back.

A run killed with SIGKILL (or on a machine that lost power) stays STARTED in the instance, and the
`duckdb_warehouse` slot it claimed stays claimed: every later writer waits forever ("Step blocked
by limit for pool duckdb_warehouse"). This module frees the slots (and queue places) of runs that
have ended, and of runs whose processes, as their own events recorded them, are all gone from this
machine: a dead process is a fact, not a guess, so such a run is marked failed and freed at once.
It runs whenever the code location loads (every `dagster asset materialize`, before its run can wait
on the pool, with or without the daemon), as the sensor `free_stuck_slots` under the daemon, and by
hand:

    python -m unirec_dagster.slots            # report and free
    python -m unirec_dagster.slots --dry-run  # report only

A process id only means something on the machine that launched the run, so the process check
assumes that the runs of a DAGSTER_HOME run on its machine (the DefaultRunLauncher; containers that
share one DAGSTER_HOME must share a process namespace). Under another run launcher (the K8s one of
deploy/, runs in their own pods) the check is skipped: Dagster's run monitoring (dagster.yaml
`run_monitoring`, the launcher checks each run worker's health) marks a run whose pod died as
failed, and this module then frees the places of such ended runs.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass

import dagster as dg

logger = logging.getLogger(__name__)
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


def runs_on_this_machine(instance: dg.DagsterInstance) -> bool:
    """Whether the instance launches runs as local processes, so that a run's process ids mean
    something here. Under the K8s run launcher (deploy/) runs live in other pods: there only runs
    that ended free their places, and Dagster's run monitoring, which asks the launcher about each
    run's worker, is what marks a run whose pod died as failed."""
    return isinstance(instance.run_launcher, dg.DefaultRunLauncher)


def why_dead(instance: dg.DagsterInstance, run: dg.DagsterRun | None) -> str | None:
    """Why the run will never use or free its place in a pool, or None while it may still."""
    if run is None:
        return "the run no longer exists"
    if run.status in ENDED:
        return f"the run ended ({run.status.value}) without leaving the pool"
    if not runs_on_this_machine(instance):
        return None
    pids = {r.dagster_event.pid for r in instance.all_logs(run.run_id) if r.dagster_event and r.dagster_event.pid}
    # No recorded process yet: the run is starting. One live process: it may still log and finish.
    if not pids or any(_alive(pid) for pid in pids):
        return None
    return f"its processes {sorted(pids)} are gone from this machine (killed?)"


def inspect_pools(instance: dg.DagsterInstance) -> list[StuckSlot]:
    """The places in every pool (claimed slots, and steps queued for one) of runs that will never use
    or free them. A dead queued run matters as much as a dead holder: freeing the holder hands the
    slot to the first queued step, and a dead one never gives it back."""
    storage = instance.event_log_storage
    stuck = []
    verdicts: dict[str, str | None] = {}
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        claimed = {(c.run_id, c.step_key) for c in info.claimed_slots}
        places = ([(run_id, step_key, True) for run_id, step_key in sorted(claimed)]
                  + [(p.run_id, p.step_key, False) for p in info.pending_steps if (p.run_id, p.step_key) not in claimed])
        for run_id, step_key, holds in places:
            if run_id not in verdicts:
                verdicts[run_id] = why_dead(instance, instance.get_run_by_id(run_id))
            why = verdicts[run_id]
            if why:
                stuck.append(StuckSlot(pool, run_id, step_key, why, holds))
    return stuck


def _describe(slot: StuckSlot) -> str:
    place = "holds a slot" if slot.holds else "is queued for a slot"
    return f"pool {slot.pool}: run {slot.run_id} step {slot.step_key} {place}: {slot.why}"


def free_stuck_slots(instance: dg.DagsterInstance, dry_run: bool = False, log=print) -> list[StuckSlot]:
    """Free the slots and queue places of dead runs (and mark those runs failed); returns what was found."""
    stuck = inspect_pools(instance)
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


def is_a_step_worker(argv: list[str] | None = None) -> bool:
    """Whether this process executes one step of a run that another process holds: a step process of
    the multiprocess executor (a child of the run's process), or `dagster api execute_step`."""
    args = sys.argv if argv is None else argv
    return multiprocessing.parent_process() is not None or "execute_step" in args[1:3]


def free_when_the_code_location_loads() -> None:
    """Free dead runs' places before this process's run can queue behind them: without the daemon
    (a `dagster asset materialize` in CI) nothing else would. Only for an instance of this machine
    (DAGSTER_HOME set, local run launcher); a failure here is logged, never a reason not to load."""
    if not os.environ.get("DAGSTER_HOME"):
        return  # an ephemeral instance: no earlier run can hold anything
    if is_a_step_worker():
        return  # the run's own process checked when it loaded: 0.9 s saved per step
    try:
        with dg.DagsterInstance.get() as instance:
            if runs_on_this_machine(instance):
                free_stuck_slots(instance, log=lambda line: logger.warning("unirec_dagster.slots: %s", line))
    except Exception as exc:  # noqa: BLE001 - loading must not fail on a check of other runs
        logger.warning("unirec_dagster.slots: could not check for dead runs holding a pool slot: %s", exc)


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
