"""Replay a range of nights as the daemon would run them, on a copy of a dataset's daily files:
the way to validate a deployment on your own history before leaving it to its schedules.

    DAGSTER_HOME=/tmp/replay/home UNIREC_DUCKDB_PATH=/tmp/replay/w.duckdb UNIREC_MODELS_DIR=/tmp/replay/models \\
        python -m unirec_dagster.replay --from 2010-12-26 --to 2011-01-15 [--late 2011-01-05] [--missing 2011-01-11]

It starts as a new deployment does: the days before the range are ingested (`ingest_day` over
them), `deployment_start` builds the catalogs, the text view and the graph of the last complete
week's Saturday, and `weekly_pretraining` pretrains on that week. Then simulated time runs from the first night's morning to
the last's. Night D's file lands at 00:30 on D+1 (04:30 with `--late D`, never with `--missing D`);
every schedule of the code location is evaluated at each of its cron ticks
(`build_schedule_context(scheduled_execution_time=...)`), and every sensor that a fresh deployment
runs (default status RUNNING) hourly with its cursor (`build_sensor_context`). Each run request is
executed through the instance, awaited, with the run config it carries, the tags the daemon would
add (`dagster/schedule_name` or `dagster/sensor_name`, `dagster/run_key`, the partition), the job's
own executor and the `duckdb_warehouse` pool; a run key already used is skipped, as the daemon
does, so a replay that is run again resumes. What is not replayed: the queued run coordinator's
dequeuing and the run launcher's process (runs execute as `dagster job execute` would). The sensors'
cursors are kept in `<workdir>/cursors.json` (the daemon keeps them in its instance), so a replay run
again resumes with them.

It ends with a report (printed, and written to `<workdir>/report.md`): per night, when it was
served and why then, each check that failed, and the served and strongest-peer test figures once
the night's window has closed (from `model_evaluation`, requested by `delayed_evaluation_sensor`).
The exit status is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml
from dagster._utils.schedules import cron_string_iterator

from unirec_dagster import settings
from unirec_dagster.datasets import SpecError, last_complete_week, load_spec
from unirec_dagster.slots import ENDED

FILE_LANDS = dt.timedelta(minutes=30)     # after midnight, on the day after the file's day
LATE_FILE_LANDS = dt.timedelta(hours=4, minutes=30)  # after the 02:00 tick, before the default deadline
SENSOR_EVERY = dt.timedelta(hours=1)
REQUESTER_TAG = {"schedule": "dagster/schedule_name", "sensor": "dagster/sensor_name"}
REPLAY_TICK_TAG = "unirec/replay_tick"  # the simulated time a replayed run was requested at


def job_named(name: str) -> dg.JobDefinition:
    """The code location's job `name`: how each step process of a replayed run finds its job."""
    from unirec_dagster.definitions import defs

    return defs().resolve_job_def(name)


def copy_spec(spec_path: Path, workdir: Path) -> Path:
    """A copy of the spec whose daily files are read from `workdir/files` (empty until they land);
    every other path of the spec is made absolute, so the copy reads the same catalogs."""
    spec = load_spec(spec_path)
    if not spec.is_daily_layout:
        raise SpecError(f"{spec_path}: the replay plays daily files; this spec's events are a glob "
                        f"({spec.events.path}), not one file per day ('{{date}}' in events.path)")
    raw = yaml.safe_load(spec_path.read_text())
    raw["events"]["path"] = str(workdir / "files" / Path(spec.events.path).name)
    for kind in ("items", "users"):
        source = (raw.get(kind) or {}).get("file")
        if source:
            source["path"] = str(spec.resolve(source["path"]))
    (workdir / "files").mkdir(parents=True, exist_ok=True)
    copy = workdir / "spec.yaml"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy


@dataclass
class Run:
    """A replayed run, as the instance recorded it."""
    tick: dt.datetime
    requested_by: str
    job: str
    partition: str
    run_id: str
    status: str
    seconds: float
    failed_checks: list[str] = field(default_factory=list)   # ERROR severity: something is wrong
    warnings: list[str] = field(default_factory=list)        # WARN severity: e.g. the gate serving a baseline
    tags: dict = field(default_factory=dict)


def replayed_runs(instance: dg.DagsterInstance, run_ids: list[str] | None = None) -> list[Run]:
    """Every run a replay launched into this instance (or those of `run_ids`), in simulated order:
    the report is read from the instance, so a replay run again (which resumes) reports the whole range."""
    runs = []
    # oldest first (get_runs lists the newest first), so runs of one tick keep the order they ran in
    for run in reversed(instance.get_runs(dg.RunsFilter(run_ids=run_ids) if run_ids else None)):
        if REPLAY_TICK_TAG not in run.tags:
            continue
        tags = dict(run.tags)
        by = next((f"{kind} {tags[tag]}" for kind, tag in REQUESTER_TAG.items() if tag in tags), "deployment start")
        partition = tags.get("dagster/partition") or (
            f"{tags['dagster/asset_partition_range_start']}..{tags['dagster/asset_partition_range_end']}"
            if "dagster/asset_partition_range_start" in tags else "")
        stats = instance.get_run_stats(run.run_id)
        checks = check_evaluations(instance, run.run_id)
        runs.append(Run(
            dt.datetime.fromisoformat(tags[REPLAY_TICK_TAG]), by, run.job_name, partition, run.run_id,
            run.status.value, (stats.end_time or 0) - (stats.start_time or 0),
            [f"{c.asset_key.to_user_string()}.{c.check_name}: {c.description or 'failed'}" for c in checks
             if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR],
            [c.check_name for c in checks if not c.passed and c.severity != dg.AssetCheckSeverity.ERROR], tags))
    return sorted(runs, key=lambda r: r.tick)  # stable: the launch order within a tick


class Replay:
    def __init__(self, instance: dg.DagsterInstance, definitions: dg.Definitions, source, copy, log=print,
                 cursor_file: Path | None = None):
        self.instance, self.source, self.copy, self.log = instance, source, copy, log
        self.repository = definitions.get_repository_def()
        self.resources = definitions.resources or {}
        # The sensors' cursors, kept in a file beside the landed files as the daemon keeps them in
        # its instance: a replay run again resumes with them.
        self.cursor_file = cursor_file
        self.cursors: dict[str, str | None] = (
            json.loads(cursor_file.read_text()) if cursor_file is not None and cursor_file.exists() else {})

    # -- the world --------------------------------------------------------------------------
    def land(self, day: dt.date, at: dt.datetime) -> None:
        source = self.source.events_file_for(day)
        if source.exists() and not self.copy.events_file_for(day).exists():
            shutil.copyfile(source, self.copy.events_file_for(day))

    # -- the daemon's part ------------------------------------------------------------------
    def launch(self, job: str, request: dg.RunRequest, requested_by: tuple[str, str], tick: dt.datetime) -> None:
        kind, name = requested_by
        requester = REQUESTER_TAG.get(kind, "unirec/replay_step")
        tags = {**request.tags, requester: name, REPLAY_TICK_TAG: tick.isoformat()}
        if request.run_key:
            tags["dagster/run_key"] = request.run_key
            used = self.instance.get_runs(dg.RunsFilter(job_name=job, tags={
                "dagster/run_key": request.run_key, requester: name}), limit=1)
            if used and used[0].status not in ENDED:
                # Each run is awaited, so one not ended when its key comes up again was cut off with a
                # stopped replay: failed, as run monitoring fails a dead run. Like the
                # daemon, the replay does not request its key again; re-execute it from the UI.
                self.instance.report_run_failed(used[0], "the replay was stopped during this run")
                self.log(f"{tick:%Y-%m-%d %H:%M} {job} {used[0].run_id}: left unfinished by a stopped replay, "
                         "marked failed (not run again, as the daemon would not)")
            if used:
                return  # the daemon launches a run key once
        if request.partition_key:
            tags["dagster/partition"] = request.partition_key
        partition = request.partition_key or (
            f"{tags['dagster/asset_partition_range_start']}..{tags['dagster/asset_partition_range_end']}"
            if "dagster/asset_partition_range_start" in tags else "")
        self.log(f"{tick:%Y-%m-%d %H:%M} {kind} {name}: {job} {partition}")
        result = dg.execute_job(dg.build_reconstructable_job(__name__, "job_named", (job,)), self.instance,
                                run_config=request.run_config or None, tags=tags)
        run = replayed_runs(self.instance, [result.run_id])[0]
        self.log(f"    {run.status} in {run.seconds:.0f} s" + "".join(f"\n    check failed: {c}" for c in run.failed_checks)
                 + "".join(f"\n    check warned: {c}" for c in run.warnings))

    def tick(self, now: dt.datetime, schedules_due: list) -> None:
        for schedule in schedules_due:
            schedule_context = dg.build_schedule_context(self.instance, scheduled_execution_time=now,
                                                         resources=self.resources, repository_def=self.repository)
            for request in schedule.evaluate_tick(schedule_context).run_requests or []:
                self.launch(request.job_name or schedule.job_name, request, ("schedule", schedule.name), now)
        for sensor in self.repository.sensor_defs:
            if sensor.default_status != dg.DefaultSensorStatus.RUNNING:
                continue  # stopped until an operator turns it on
            sensor_context = dg.build_sensor_context(self.instance, cursor=self.cursors.get(sensor.name),
                                                     repository_def=self.repository, resources=self.resources)
            data = sensor.evaluate_tick(sensor_context)
            if data.cursor != self.cursors.get(sensor.name):
                self.cursors[sensor.name] = data.cursor
                if self.cursor_file is not None:
                    self.cursor_file.write_text(json.dumps(self.cursors, indent=1, sort_keys=True))
            for request in data.run_requests or []:  # a sensor without a job never requests a run
                self.launch(request.job_name or str(sensor.job_name), request, ("sensor", sensor.name), now)

    def start_deployment(self, first_night: dt.date) -> None:
        """What a new deployment runs once: its history ingested, then catalogs, text view and the
        graph of the last complete week's Saturday, and that week's pretraining."""
        start, day_before = self.source.events.start_date, first_night - dt.timedelta(days=1)
        week = last_complete_week(day_before)
        saturday = (dt.date.fromisoformat(week) + dt.timedelta(days=6)).isoformat()
        when = dt.datetime.combine(first_night, dt.time(), dt.UTC)
        day = start
        while day <= day_before:
            self.land(day, when)
            day += dt.timedelta(days=1)
        self.launch("ingest_day", dg.RunRequest(run_key=f"history..{day_before}", tags={
            "dagster/asset_partition_range_start": start.isoformat(),
            "dagster/asset_partition_range_end": day_before.isoformat()}), ("deployment", "start"), when)
        self.launch("deployment_start", dg.RunRequest(run_key=saturday, partition_key=saturday),
                    ("deployment", "start"), when)
        self.launch("weekly_pretraining", dg.RunRequest(run_key=week, partition_key=week), ("deployment", "start"), when)

    def play(self, first_night: dt.date, last_night: dt.date, late: set[dt.date], missing: set[dt.date]) -> None:
        begin = dt.datetime.combine(first_night + dt.timedelta(days=1), dt.time(), dt.UTC)
        end = dt.datetime.combine(last_night + dt.timedelta(days=2), dt.time(), dt.UTC)
        events: dict[dt.datetime, list] = {}
        day = first_night
        while day <= last_night:
            if day not in missing:
                at = begin + (day - first_night) + (LATE_FILE_LANDS if day in late else FILE_LANDS)
                events.setdefault(at, []).append(("land", day))
            day += dt.timedelta(days=1)
        at = begin
        while at < end:
            events.setdefault(at, []).append(("sensors", None))
            at += SENSOR_EVERY
        for schedule in self.repository.schedule_defs:
            crons = [schedule.cron_schedule] if isinstance(schedule.cron_schedule, str) else schedule.cron_schedule
            for cron in crons:
                for at in cron_string_iterator(begin.timestamp() - 1, cron, schedule.execution_timezone or "UTC"):
                    if at >= end:
                        break
                    events.setdefault(at.astimezone(dt.UTC), []).append(("schedule", schedule))
        for at in sorted(events):
            for kind, what in events[at]:
                if kind == "land":
                    self.land(what, at)
            if any(kind != "land" for kind, _ in events[at]):
                self.tick(at, [what for kind, what in events[at] if kind == "schedule"])


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [r.dagster_event.event_specific_data for r in records if r.dagster_event]


def evaluation_figures(instance: dg.DagsterInstance, night: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("model_evaluation"), asset_partitions=[night]), limit=1).records
    if not records or not records[0].asset_materialization:
        return {}
    metadata = records[0].asset_materialization.metadata
    return {k: metadata[k].value for k in ("served_recall@20", "strongest_peer_recall@20",
                                           "served_over_peer_recall@20", "strongest_peer") if k in metadata}


def report(instance: dg.DagsterInstance, source, first_night: dt.date, last_night: dt.date,
           late: set, missing: set) -> str:
    runs = replayed_runs(instance)
    lines = [f"# Replay of the nights {first_night}..{last_night}", "",
             "| night | file lands | served at (why then) | run | checks failed | warned | served R@20 | "
             "strongest peer R@20 | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    day = first_night
    while day <= last_night:
        night = day.isoformat()
        nightly = [r for r in runs if r.job == "nightly_recommendations" and r.partition == night]
        figures = evaluation_figures(instance, night)
        file = ("never (--missing)" if day in missing else "none (closed)" if not source.events_file_for(day).exists()
                else "04:30 (--late)" if day in late else "00:30")
        served = ", ".join(f"{r.tick:%m-%d %H:%M} ({r.tags.get('unirec/day_file', '')})" for r in nightly) or "not served"
        ratio = figures.get("served_over_peer_recall@20")
        peer = figures.get("strongest_peer")
        lines.append(f"| {night} | {file} | {served} | {', '.join(r.status for r in nightly) or '-'} | "
                     f"{'; '.join(c for r in nightly for c in r.failed_checks) or 'none'} | "
                     f"{', '.join(c for r in nightly for c in r.warnings) or 'none'} | "
                     f"{_figure(figures.get('served_recall@20'))} | "
                     f"{_figure(figures.get('strongest_peer_recall@20'))}{f' ({peer})' if peer else ''} | "
                     f"{f'{ratio:.2f}x' if ratio else '-'} |")
        day += dt.timedelta(days=1)
    lines += ["", "| tick | requested by | job | partition | status | seconds | checks failed |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.tick:%Y-%m-%d %H:%M} | {r.requested_by} | {r.job} | {r.partition} | {r.status} | "
              f"{r.seconds:.0f} | {len(r.failed_checks)} |" for r in runs]
    return "\n".join(lines) + "\n"


def _figure(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="first", type=dt.date.fromisoformat, required=True, help="first night (YYYY-MM-DD)")
    parser.add_argument("--to", dest="last", type=dt.date.fromisoformat, required=True, help="last night (YYYY-MM-DD)")
    parser.add_argument("--late", type=dt.date.fromisoformat, action="append", default=[],
                        help="a day whose file lands at 04:30 instead of 00:30 (repeatable)")
    parser.add_argument("--missing", type=dt.date.fromisoformat, action="append", default=[],
                        help="a day whose file never lands (repeatable)")
    parser.add_argument("--workdir", type=Path, help="where the files land (default: $DAGSTER_HOME/replay)")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        parser.error("set DAGSTER_HOME to the instance to replay into (a fresh folder validates a new deployment)")
    if args.last < args.first:
        parser.error(f"--to {args.last} is before --from {args.first}")
    try:
        source_path = settings.dataset_spec_path()
        source = load_spec(source_path)
        workdir = (args.workdir or Path(os.environ["DAGSTER_HOME"]) / "replay").resolve()
        copy_path = copy_spec(source_path, workdir)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if source.events.start_date >= args.first:
        parser.error(f"--from {args.first}: a replay needs history before its first night; the data starts "
                     f"{source.events.start_date}")
    # The code location reads the spec when it loads: load it on the copy (step processes inherit this).
    os.environ[settings.DATASET_ENV] = str(copy_path)
    from unirec_dagster.definitions import defs

    late, missing = set(args.late), set(args.missing)
    with dg.DagsterInstance.get() as instance:
        replay = Replay(instance, defs(), source, load_spec(copy_path), cursor_file=workdir / "cursors.json")
        replay.start_deployment(args.first)
        replay.play(args.first, args.last, late, missing)
        text = report(instance, source, args.first, args.last, late, missing)
        failed = [r for r in replayed_runs(instance) if r.status != "SUCCESS"]
    (workdir / "report.md").write_text(text)
    print(text)
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.job} {r.partition} ({r.run_id})" for r in failed),
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
