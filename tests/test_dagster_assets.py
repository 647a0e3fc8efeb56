"""The ingestion and KG assets materialized for real by Dagster on the embedded sample."""

import csv
import datetime as dt

import dagster as dg
import pytest

from tests.conftest import SAMPLE_SPEC, SAMPLE_SPEC_PATH, warehouse_resources
from unirec_dagster.definitions import defs
from unirec_dagster.defs.graph import knowledge_graph, relation_sizes
from unirec_dagster.defs.ingest import IngestConfig, raw_events, raw_items, raw_users
from unirec_dagster.ingest import IngestRefused
from unirec_dagster.warehouse import connect, rows


def sample_lines(day: str) -> int:
    with open(SAMPLE_SPEC.events_file_for(dt.date.fromisoformat(day)), newline="") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def test_definitions_load():
    loaded = defs()
    keys = {key.to_user_string() for key in loaded.resolve_all_asset_keys()}
    assert {"raw_events", "raw_items", "raw_users", "knowledge_graph"} <= keys
    assert loaded.get_assets_def("raw_events").partitions_def.get_first_partition_key() == "2010-12-01"
    graph = loaded.resolve_asset_graph()
    assert graph.get(dg.AssetKey("raw_events")).parent_keys == {dg.AssetKey("event_files")}  # the shop's files
    assert not graph.get(dg.AssetKey("event_files")).is_materializable
    tables = {key.to_user_string(): graph.get(key).metadata.get("dagster/table_name") for key in graph.get_all_asset_keys()}
    assert tables["raw_events"] == "raw.events" and tables["recommendations"] == "serving.recommendations"
    assert all(graph.get(key).owners == ["team:recommendations"] for key in graph.get_all_asset_keys())
    fresh = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).freshness_policy}
    assert fresh == {"raw_events", "recommendations", "similar_items"}  # served every morning, or flagged


def test_materialize_partition_range_and_catalog(tmp_path):
    db = tmp_path / "w.duckdb"
    resources = warehouse_resources(db, tmp_path / "models")
    result = dg.materialize(
        [raw_events],
        resources=resources,
        tags={"dagster/asset_partition_range_start": "2010-12-01", "dagster/asset_partition_range_end": "2010-12-03"},
    )
    assert result.success
    materialization = result.asset_materializations_for_node("raw_events")[0]
    expected = sum(sample_lines(d) for d in ("2010-12-01", "2010-12-02", "2010-12-03"))
    assert materialization.metadata["lines_read"].value == expected
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"files_arrived": True, "reject_rate": True}

    again = dg.materialize([raw_events], resources=resources, partition_key="2010-12-02")
    assert again.success
    assert again.asset_materializations_for_node("raw_events")[0].metadata["lines_read"].value == sample_lines("2010-12-02")

    assert dg.materialize([raw_items, raw_users], resources=resources).success
    kg = dg.materialize([knowledge_graph], resources=resources, partition_key="2010-12-03",
                        run_config={"ops": {"knowledge_graph": {"config": {"cooccurrence_top_n": 5}}}})
    assert kg.success
    assert {c.check_name: c.passed for c in kg.get_asset_check_evaluations()} == {
        "no_dangling_ids": True, "items_have_entities": True}
    # relation_sizes reads the warehouse only: run alone, with tighter bounds, it re-checks the night
    recheck = dg.materialize([knowledge_graph, relation_sizes], resources=resources,
                             selection=dg.AssetSelection.checks(relation_sizes),
                             run_config={"ops": {"knowledge_graph_relation_sizes": {"config": {"max_relation_triples": 10}}}})
    assert recheck.success and not recheck.asset_materializations_for_node("knowledge_graph")
    [sizes] = recheck.get_asset_check_evaluations()
    assert sizes.check_name == "relation_sizes" and not sizes.passed and sizes.severity == dg.AssetCheckSeverity.WARN
    assert sizes.metadata["out_of_bounds"].value and sizes.metadata["snapshot_date"].value == "2010-12-03"
    conn = connect(db, read_only=True)
    assert rows(conn, "SELECT max(last_seen) < DATE '2010-12-04' FROM kg.triples")[0][0]
    assert rows(conn, "SELECT max(n) <= 5 FROM (SELECT count(*) n FROM kg.triples JOIN kg.relations USING (relation_id)"
                      " WHERE name = 'item_co_occurs' GROUP BY head_id)")[0][0]
    events, rejected, days = rows(conn, """SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM raw.rejected_events),
                                              (SELECT count(DISTINCT partition_date) FROM raw.events)""")[0]
    assert events + rejected == expected and days == 3
    assert rows(conn, "SELECT count(*) > 1000, count(title) > 1000 FROM raw.items")[0] == (True, True)
    conn.close()


def test_a_missing_file_fails_files_arrived_naming_the_day_unless_the_shop_is_closed(tmp_path):
    """2010-12-04 is a Saturday, which the sample's spec declares closed; a spec that does not
    declare it reports the day, and the run still succeeds (the night serves from what it has)."""
    open_all_week = tmp_path / "spec.yaml"
    files = SAMPLE_SPEC_PATH.parent.parent / "sample" / "by-day"
    open_all_week.write_text(SAMPLE_SPEC_PATH.read_text().replace("../sample/by-day/", f"{files}/")
                             .replace("  closed: [Saturday, 2010-12-24..2011-01-03]\n", ""))
    weekend = {"dagster/asset_partition_range_start": "2010-12-03", "dagster/asset_partition_range_end": "2010-12-05"}
    for spec, missing in ((SAMPLE_SPEC_PATH, []), (open_all_week, ["2010-12-04"])):
        result = dg.materialize([raw_events], tags=weekend,
                                resources=warehouse_resources(tmp_path / f"{len(missing)}.duckdb", tmp_path / "m", spec))
        assert result.success
        check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "files_arrived")
        assert check.passed == (not missing) and check.metadata["missing_days"].value == missing
        assert ("2010-12-04" in check.description) == bool(missing)


def test_raw_events_called_directly_refuses_to_empty_a_stored_day(tmp_path):
    """The asset function itself, as project_fully_featured's tests call theirs: with a typo in the
    dataset's path it fails clearly and the stored day stays."""
    db = tmp_path / "w.duckdb"
    assert dg.materialize([raw_events], resources=warehouse_resources(db, tmp_path / "models"),
                          partition_key="2010-12-01").success
    typo = tmp_path / "typo.yaml"
    typo.write_text(SAMPLE_SPEC_PATH.read_text().replace("../sample/by-day/{date}.csv",
                                                         str(SAMPLE_SPEC_PATH.parent / "../sample/by-day/{date}.cvs")))
    context = dg.build_asset_context(partition_key="2010-12-01",
                                     resources=warehouse_resources(db, tmp_path / "models", typo))
    with pytest.raises(IngestRefused, match=r"matches no file for any date .*by-day/\*\.cvs"):
        list(raw_events(context, IngestConfig()))
    conn = connect(db, read_only=True)
    assert rows(conn, "SELECT count(*) FROM raw.events")[0][0] == sample_lines("2010-12-01") - rows(
        conn, "SELECT count(*) FROM raw.rejected_events")[0][0]
    conn.close()
