import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_spec
from unirec_dagster import settings
from unirec_dagster.datasets import SpecError, load_spec


def error_for(tmp_path, events=None, **extra) -> str:
    path = write_spec(tmp_path, events or {}, **extra)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value)


def test_bundled_specs_load():
    sample = load_spec(settings.DEFAULT_DATASET)
    assert sample.is_daily_layout
    assert sample.events_file_for(sample.events.start_date).is_file()
    retail = load_spec(settings.PROJECT_ROOT / "data" / "datasets" / "online-retail.yaml")
    assert retail.events.end_date.isoformat() == "2011-12-09"
    assert retail.events.positive_event_type == "purchase"
    assert "POST" in retail.items.never_recommend and "POST" in sample.items.never_recommend


def test_missing_key_names_file_and_key(tmp_path):
    path = write_spec(tmp_path, {})
    text = path.read_text().replace("  item_id: item\n", "")
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message
    assert "events.item_id" in message and "required key is missing" in message


def test_unknown_key_is_reported(tmp_path):
    message = error_for(tmp_path, {"delimter": ";"})
    assert "events.delimter" in message and "unknown key" in message


def test_timestamp_format_and_unit_are_exclusive(tmp_path):
    message = error_for(tmp_path, {"timestamp": {"column": "ts", "format": "%Y", "unit": "s"}})
    assert "events.timestamp" in message and "not both" in message


def test_positive_type_must_be_produced(tmp_path):
    message = error_for(tmp_path, {"event_type": "view"})
    assert "positive_event_type 'purchase'" in message


def test_headerless_csv_needs_columns(tmp_path):
    message = error_for(tmp_path, {"header": False})
    assert "columns" in message


def test_event_type_rule_needs_one_condition(tmp_path):
    rule = {"column": "kind", "value": "view", "equals": "v", "starts_with": "x"}
    message = error_for(tmp_path, {"event_type": {"rules": [rule], "default": "purchase"}})
    assert "exactly one condition" in message


def test_date_format_without_day_is_refused(tmp_path):
    message = error_for(tmp_path, {"path": "events-{date:%Y-%m}.csv"})
    assert "events.path" in message


def test_attribute_file_needs_id(tmp_path):
    message = error_for(tmp_path, items={"file": {"path": "items.csv"}})
    assert "items" in message and "id" in message


def test_never_recommend_is_for_items(tmp_path):
    assert "under 'items'" in error_for(tmp_path, users={"never_recommend": ["POST"]})


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="UNIREC_DATASET"):
        load_spec(tmp_path / "nope.yaml")


def test_date_placeholder_formats(tmp_path):
    import datetime as dt

    spec = load_spec(write_spec(tmp_path, {"path": "logs/{date:%Y%m%d}.tsv"}))
    assert spec.events_file_for(dt.date(2024, 3, 5)) == (tmp_path / "logs" / "20240305.tsv").resolve()


def test_attribute_named_like_a_built_in_entity_type_is_refused(tmp_path):
    path = write_spec(tmp_path, {}, items={"attributes": {"item": "group"}})
    with pytest.raises(SpecError, match=r"items\.attributes\.item.*built-in entity type"):
        load_spec(path)


@pytest.mark.parametrize("events, extra, key, words", [
    ({"timestamp": {"column": "ts", "format": "%Y-%m-%d %Q"}}, {}, "events.timestamp.format", "unknown strptime directive(s) %Q"),
    ({"timestamp": {"column": "ts", "format": "yyyy-mm-dd"}}, {}, "events.timestamp.format", "no strptime directive"),
    ({"user_id": ""}, {}, "events.user_id.column", "the column name is empty"),
    ({"timestamp": {"column": " "}}, {}, "events.timestamp.column", "the column name is empty"),
    ({}, {"name": "../.."}, "name", "not a usable name"),
    ({}, {"name": "shop/a"}, "name", "not a usable name"),
])
def test_unusable_values_are_refused_at_load_naming_the_key(tmp_path, events, extra, key, words):
    message = error_for(tmp_path, events, **extra)
    assert f"key '{key}'" in message and words in message, message


def test_dashed_directives_are_accepted(tmp_path):
    assert load_spec(write_spec(tmp_path, {"timestamp": {"column": "ts", "format": "%-m/%-d/%Y %H:%M"}}))


def test_a_cli_command_on_a_bad_spec_prints_the_message_alone(tmp_path):
    """The spec is read when the code location loads, so every Dagster command meets its error:
    it must read as the one message it is, not as a crash with a long traceback."""
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nevents:\n  path: '{date}.csv'\n")
    env = {**os.environ, "UNIREC_DATASET": str(spec), "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run = subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                          "unirec_dagster.definitions", "--select", "raw_events", "--partition", "2024-01-01"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"error: {spec}: invalid dataset spec" in run.stderr
    assert "key 'events.user_id': required key is missing" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) < 15


def test_closed_days_are_weekdays_dates_and_ranges(tmp_path):
    spec = load_spec(write_spec(tmp_path, {"closed": ["Saturday", "2010-12-24..2011-01-03", "2011-04-22"]})).events
    closed = (dt.date(2010, 12, 18), dt.date(2010, 12, 24), dt.date(2011, 1, 3), dt.date(2011, 4, 22))
    assert all(spec.is_closed(d) for d in closed)
    assert not any(spec.is_closed(d) for d in (dt.date(2010, 12, 23), dt.date(2011, 1, 4), dt.date(2011, 4, 21)))
    for bad, words in (("Caturday", "not a weekday"), ("2011-01-03..2010-12-24", "ends before it starts")):
        with pytest.raises(SpecError, match=words):
            load_spec(write_spec(tmp_path, {"closed": [bad]}))
