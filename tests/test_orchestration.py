"""Schedules and sensors produce the expected run requests (Dagster's test utilities)."""

import datetime as dt
import json

import dagster as dg

from tests.conftest import SAMPLE_SPEC, SAMPLE_SPEC_PATH
from unirec_dagster.datasets import last_complete_week
from unirec_dagster.definitions import defs as code_location
from unirec_dagster.defs.resources import DatasetResource
from unirec_dagster.defs.schedules import (
    NIGHTLY_DEADLINE_HOUR,
    delayed_evaluation_sensor,
    new_event_file_sensor,
    nightly_assets,
    nightly_schedule,
    weekly_pretraining_schedule,
)
from unirec_dagster.replay import Replay


def test_weekly_pretraining_runs_for_the_week_that_ended():
    """Sunday 2011-01-09 01:00: the week 2011-01-02 (Sunday) to 2011-01-08 (Saturday), one partition a
    week, so no daily partitions stay missing forever."""
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2011, 1, 9, 1, 0),
                                        repository_def=code_location().get_repository_def())
    assert [r.partition_key for r in weekly_pretraining_schedule.evaluate_tick(context).run_requests] == ["2011-01-02"]
    weeks = code_location().get_assets_def("pretrained_encoder").partitions_def
    assert weeks.get_partition_keys()[:2] == ["2010-12-05", "2010-12-12"] and weeks.get_last_partition_key() == "2011-01-09"
    assert last_complete_week(dt.date(2011, 1, 8)) == "2011-01-02" == last_complete_week(dt.date(2011, 1, 14))


def nightly_tick(hour: int, day: dt.date, spec_path=SAMPLE_SPEC_PATH):
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(day.year, day.month, day.day, hour, 0),
                                        resources={"dataset": DatasetResource(spec_path=str(spec_path))},
                                        repository_def=code_location().get_repository_def())
    return nightly_schedule.evaluate_tick(context)


def test_nightly_schedule_serves_yesterday_when_its_file_is_there():
    result = nightly_tick(2, dt.date(2011, 1, 5))
    assert [r.partition_key for r in result.run_requests] == ["2011-01-04"]
    assert result.run_requests[0].run_key == "2011-01-04" and result.run_requests[0].tags["unirec/day_file"] == "arrived"
    closed = nightly_tick(2, dt.date(2011, 1, 9))  # Saturday 2011-01-08: declared closed, no wait
    assert closed.run_requests[0].tags["unirec/day_file"] == "closed"


def test_a_late_file_makes_the_nightly_wait_until_it_lands_or_the_deadline(tmp_path):
    """2011-01-04's file is absent (late): the night waits, runs on the tick after it lands, and at
    the deadline runs anyway from the data there is."""
    files = tmp_path / "by-day"
    files.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(SAMPLE_SPEC_PATH.read_text().replace("../sample/by-day/", f"{files}/"))
    assert nightly_tick(2, dt.date(2011, 1, 5), spec).skip_message.startswith("waiting for 2011-01-04.csv")
    deadline = nightly_tick(NIGHTLY_DEADLINE_HOUR, dt.date(2011, 1, 5), spec).run_requests
    assert deadline[0].partition_key == "2011-01-04" and deadline[0].tags["unirec/day_file"] == "missing at the deadline"
    (files / "2011-01-04.csv").write_text("landed late")
    landed = nightly_tick(3, dt.date(2011, 1, 5), spec).run_requests
    assert landed[0].partition_key == "2011-01-04" and landed[0].tags["unirec/day_file"] == "arrived"


def test_sensor_requests_each_new_file_once():
    resources = {"dataset": DatasetResource(spec_path=str(SAMPLE_SPEC_PATH))}
    context = dg.build_sensor_context(resources=resources)
    first = list(new_event_file_sensor(context))
    days_with_files = [p.stem for p in SAMPLE_SPEC.events_file_for(SAMPLE_SPEC.events.start_date).parent.glob("*.csv")]
    assert len(days_with_files) == 30  # the embedded sample
    assert sorted(r.partition_key for r in first) == sorted(days_with_files)
    again = new_event_file_sensor(dg.build_sensor_context(cursor=context.cursor, resources=resources))
    assert isinstance(again, dg.SkipReason)


def materialized(instance: dg.DagsterInstance, asset: str, *days: dt.date) -> None:
    for day in days:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=day.isoformat()))


def test_a_served_night_is_evaluated_once_its_test_window_has_been_ingested():
    """The nightly job cannot score night D (its window D+1..D+14 is in the future); the sensor asks
    for model_evaluation(D) on the tick after day D+14 is ingested, once per served table."""
    nightly = nightly_assets.resolve(code_location().resolve_asset_graph())
    assert dg.AssetKey("recommendations") in nightly and dg.AssetKey("model_evaluation") not in nightly
    night = dt.date(2010, 12, 10)
    with dg.DagsterInstance.ephemeral() as instance:
        def tick():
            return delayed_evaluation_sensor(dg.build_sensor_context(instance=instance))

        materialized(instance, "recommendations", night)
        materialized(instance, "raw_events", *(night + dt.timedelta(days=i) for i in range(0, 14)))  # up to D+13
        assert isinstance(tick(), dg.SkipReason)
        materialized(instance, "raw_events", night + dt.timedelta(days=14))
        first = tick()
        assert [r.partition_key for r in first] == [night.isoformat()]
        materialized(instance, "model_evaluation", night)
        assert isinstance(tick(), dg.SkipReason)  # scored: not asked again
        materialized(instance, "recommendations", night)  # a backfill re-serves the night
        again = tick()
        assert [r.partition_key for r in again] == [night.isoformat()] and again[0].run_key != first[0].run_key


def test_a_replay_keeps_sensor_cursors_between_runs_as_the_daemon_does(tmp_path):
    """`replay` evaluates each running sensor with its stored cursor; stored in a file beside the
    landed files, the cursor survives a replay that is run again."""
    @dg.op
    def nothing():
        pass

    @dg.sensor(job=dg.GraphDefinition(name="noop", node_defs=[nothing]).to_job(),
               default_status=dg.DefaultSensorStatus.RUNNING)
    def counting_sensor(context: dg.SensorEvaluationContext):
        context.update_cursor(str(int(context.cursor or 0) + 1))
        return dg.SkipReason("counting")

    definitions = dg.Definitions(sensors=[counting_sensor])
    cursors, now = tmp_path / "cursors.json", dt.datetime(2011, 1, 7, 3, tzinfo=dt.UTC)
    with dg.DagsterInstance.ephemeral() as instance:
        first = Replay(instance, definitions, SAMPLE_SPEC, SAMPLE_SPEC, log=lambda line: None, cursor_file=cursors)
        first.tick(now, [])
        first.tick(now, [])
        resumed = Replay(instance, definitions, SAMPLE_SPEC, SAMPLE_SPEC, log=lambda line: None, cursor_file=cursors)
        resumed.tick(now, [])
    assert json.loads(cursors.read_text()) == {"counting_sensor": "3"}
