"""Schedules and the sensor produce the expected run requests (Dagster's test utilities)."""

import datetime as dt

import dagster as dg

from tests.conftest import SAMPLE_SPEC, SAMPLE_SPEC_PATH
from unirec_dagster.defs.resources import DatasetResource
from unirec_dagster.defs.schedules import new_event_file_sensor, nightly_schedule, weekly_pretraining_schedule


def test_weekly_pretraining_runs_for_the_last_complete_day():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2011, 1, 9, 1, 0))
    request = weekly_pretraining_schedule(context)
    assert request.partition_key == "2011-01-08"


def test_nightly_schedule_targets_yesterday():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2011, 1, 5, 2, 0))
    result = nightly_schedule.evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == ["2011-01-04"]


def test_sensor_requests_each_new_file_once():
    resources = {"dataset": DatasetResource(spec_path=str(SAMPLE_SPEC_PATH))}
    context = dg.build_sensor_context(resources=resources)
    first = list(new_event_file_sensor(context))
    days_with_files = [p.stem for p in SAMPLE_SPEC.events_file_for(SAMPLE_SPEC.events.start_date).parent.glob("*.csv")]
    assert len(days_with_files) == 30  # the embedded sample
    assert sorted(r.partition_key for r in first) == sorted(days_with_files)
    again = new_event_file_sensor(dg.build_sensor_context(cursor=context.cursor, resources=resources))
    assert isinstance(again, dg.SkipReason)
