"""Three nights played as the daemon would, from a fresh instance (`python -m unirec_dagster.replay`):
a Friday whose file is late, a Saturday the shop is closed, and a Sunday whose file never lands;
the weekly pretraining runs on its Sunday tick, before that night's graph exists."""

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from unirec_dagster import settings
from unirec_dagster.datasets import load_spec
from unirec_dagster.definitions import defs
from unirec_dagster.replay import Replay, replayed_runs
from unirec_dagster.warehouse import connect, rows

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
NIGHTS = {"2011-01-07": ("2011-01-08T05:00:00+00:00", "arrived"),         # its file lands at 04:30
          "2011-01-08": ("2011-01-09T02:00:00+00:00", "closed"),          # Saturday: no file, no wait
          "2011-01-09": ("2011-01-10T06:00:00+00:00", "missing at the deadline")}


def replay(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unirec_dagster.replay", "--from", "2011-01-07", "--to", "2011-01-09",
                           "--late", "2011-01-07", "--missing", "2011-01-09"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.mark.timeout(2 * 1200 + 60)  # two replays, each bounded by its subprocess timeout (about 2.5 min alone)
def test_replayed_nights_wait_for_a_late_file_and_name_a_missing_one(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "UNIREC_DUCKDB_PATH": str(tmp_path / "w.duckdb"),
           "UNIREC_MODELS_DIR": str(tmp_path / "models")}
    env.pop("UNIREC_DATASET", None)  # the embedded sample
    first = replay(env)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (home / "replay" / "report.md").read_text()
    assert "| 2011-01-09 | never (--missing) | 01-10 06:00 (missing at the deadline) | SUCCESS |" in report

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        runs = replayed_runs(instance)
        assert [(r.requested_by, r.job, r.partition) for r in runs[:3]] == [
            ("deployment start", "ingest_day", "2010-12-01..2011-01-06"),
            ("deployment start", "deployment_start", "2011-01-01"),       # the last complete week's Saturday
            ("deployment start", "weekly_pretraining", "2010-12-26")]     # and that week
        [weekly] = [r for r in runs if r.requested_by == "schedule weekly_pretraining_schedule"]
        assert (weekly.partition, weekly.tags["unirec/replay_tick"]) == ("2011-01-02", "2011-01-09T01:00:00+00:00")
        nightly = {r.partition: r for r in runs if r.job == "nightly_recommendations"}
        assert set(nightly) == set(NIGHTS) and all(r.status == "SUCCESS" for r in runs)
        for night, (tick, day_file) in NIGHTS.items():
            run = nightly[night]
            assert run.tags["dagster/schedule_name"] == "nightly_schedule" and run.tags["dagster/run_key"] == night
            assert (run.tags["unirec/replay_tick"], run.tags["unirec/day_file"]) == (tick, day_file)
            missing_named = [c for c in run.failed_checks if c.startswith("raw_events.files_arrived")]
            assert bool(missing_named) == (night == "2011-01-09")
        assert "2011-01-09" in nightly["2011-01-09"].failed_checks[0]

        again = replay(env)  # played again: every run key is used already, nothing runs twice
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(replayed_runs(instance)) == len(runs)

    conn = connect(tmp_path / "w.duckdb", read_only=True)
    served = rows(conn, "SELECT DISTINCT CAST(partition_date AS VARCHAR) FROM serving.recommendations ORDER BY 1")
    conn.close()
    assert [night for (night,) in served] == sorted(NIGHTS)


def test_a_run_left_unfinished_by_a_stopped_replay_is_failed_and_its_key_not_requested_again(tmp_path):
    spec = load_spec(settings.DEFAULT_DATASET)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        tags = {"dagster/run_key": "2011-01-07", "dagster/schedule_name": "nightly_schedule"}
        cut_off = instance.create_run_for_job(defs().resolve_job_def("nightly_recommendations"), tags=tags,
                                              status=dg.DagsterRunStatus.STARTED)
        said = []
        replay = Replay(instance, defs(), spec, spec, log=said.append)
        replay.launch("nightly_recommendations", dg.RunRequest(run_key="2011-01-07", partition_key="2011-01-07"),
                      ("schedule", "nightly_schedule"), dt.datetime(2011, 1, 8, 2, tzinfo=dt.UTC))
        assert instance.get_run_by_id(cut_off.run_id).status == dg.DagsterRunStatus.FAILURE
        assert len(instance.get_runs()) == 1 and "left unfinished by a stopped replay" in said[0]
