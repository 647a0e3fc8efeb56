import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_text
from unirec_dagster.datasets import SpecError
from unirec_dagster.ingest import IngestRefused, build_catalog, ingest_days
from unirec_dagster.warehouse import rows, scalar

DAY1, DAY2, DAY3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)


def table_counts(conn):
    return rows(conn, "SELECT (SELECT count(*) FROM raw.events), (SELECT count(*) FROM raw.rejected_events)")[0]


def reasons(conn):
    return dict(rows(conn, "SELECT reason, count(*) FROM raw.rejected_events GROUP BY 1"))


@pytest.fixture
def retail_like(tmp_path, load):
    """Two days of CSV in the Online Retail shape, with every kind of dirt in day 1."""
    write_text(tmp_path / "2024-01-01.csv", """
        invoice,item,qty,ts,price,user,country
        1,A,2,2024-01-01 10:00:00,1.5,17850.0,UK
        1,B,1,2024-01-01 10:00:00,2.0,17850.0,UK
        1,B,1,2024-01-01 10:00:00,2.0,17850.0,UK
        2,A,1,2024-01-01 11:00:00,1.5,,UK
        3,,1,2024-01-01 11:00:00,1.5,42,FR
        4,C,1,yesterday,1.5,42,FR
        5,C,1,2024-01-01 12:00:00,1.5,42,FR,extra
        C6,A,-2,2024-01-01 13:00:00,1.5,17850.0,UK
        7,D,-1,2024-01-01 13:00:00,1.5,42,FR
        8,D,many,2024-01-01 13:00:00,1.5,42,FR
        9,E,1,2024-01-02 09:00:00,1.5,42,FR
        """)
    write_text(tmp_path / "2024-01-02.csv", """
        invoice,item,qty,ts,price,user,country
        10,A,1,2024-01-02 10:00:00,1.5,42,DE
        """)
    return load(
        {
            "user_id": {"column": "user", "strip_float_suffix": True},
            "session_id": "invoice",
            "value": "qty",
            "price": "price",
            "event_type": {
                "rules": [
                    {"column": "invoice", "starts_with": "C", "value": "cancellation"},
                    {"column": "qty", "less_than": 0, "value": "return"},
                ],
                "default": "purchase",
            },
        },
        users={"attributes": {"country": "country"}},
    )


def test_quarantine_reasons_and_nothing_lost(conn, retail_like):
    stats = ingest_days(conn, retail_like, [DAY1, DAY2])
    assert [s.lines_read for s in stats] == [11, 1]
    assert reasons(conn) == {
        "duplicate": 1,
        "missing_user_id": 1,
        "missing_item_id": 1,
        "bad_timestamp": 1,
        "wrong_column_count": 1,
        "bad_value": 1,
        "outside_partition": 1,
    }
    events, rejected = table_counts(conn)
    assert events + rejected == 12
    assert rows(conn, "SELECT user_id, event_type, value FROM raw.events WHERE session_id = 'C6'") == [
        ("17850", "cancellation", -2.0)
    ]
    assert rows(conn, "SELECT event_type FROM raw.events WHERE session_id = '7'") == [("return",)]
    wrong = rows(conn, "SELECT source_line, raw_content, detail FROM raw.rejected_events WHERE reason = 'wrong_column_count'")
    assert wrong == [(8, "5,C,1,2024-01-01 12:00:00,1.5,42,FR,extra", "expected 7 fields, found 8")]
    dup = rows(conn, "SELECT source_line, detail FROM raw.rejected_events WHERE reason = 'duplicate'")
    assert dup[0][0] == 4 and dup[0][1].endswith("2024-01-01.csv:3")
    assert scalar(conn, "SELECT raw_content FROM raw.rejected_events WHERE reason = 'bad_timestamp'") == (
        "4,C,1,yesterday,1.5,42,FR"
    )


def test_rerun_replaces_partitions(conn, retail_like):
    ingest_days(conn, retail_like, [DAY1, DAY2])
    first = table_counts(conn)
    ingest_days(conn, retail_like, [DAY1, DAY2])
    ingest_days(conn, retail_like, [DAY2])
    assert table_counts(conn) == first
    assert scalar(conn, "SELECT count(*) FROM raw.ingest_log") == 2


def test_missing_day_is_an_empty_partition(conn, retail_like):
    stats = ingest_days(conn, retail_like, [DAY3])
    assert stats[0].file_found is False and stats[0].lines_read == 0
    assert rows(conn, "SELECT file_found, lines_read FROM raw.ingest_log WHERE partition_date = ?", [DAY3]) == [(False, 0)]


def test_failed_write_leaves_the_old_partition(conn, retail_like, monkeypatch):
    ingest_days(conn, retail_like, [DAY1])
    before = table_counts(conn)
    from unirec_dagster.ingest import events as events_module

    # The second statement of the partition's transaction fails: the delete before it must not stick.
    monkeypatch.setattr(events_module, "_INSERT_REJECTS", "INSERT INTO raw.no_such_table SELECT 1")
    with pytest.raises(Exception, match="no_such_table"):
        ingest_days(conn, retail_like, [DAY1])
    assert table_counts(conn) == before


def test_catalog_keeps_latest_attributes(conn, retail_like):
    ingest_days(conn, retail_like, [DAY1, DAY2])
    stats = build_catalog(conn, retail_like, "users")
    assert stats.entities == 2
    assert rows(conn, "SELECT user_id, attributes['country'], event_count FROM raw.users ORDER BY 1") == [
        ("17850", ["UK"], 3),
        ("42", ["DE"], 2),
    ]


def test_tsv_without_header_and_epoch_seconds(tmp_path, conn, load):
    write_text(tmp_path / "2024-01-01.tsv", "u1\ti1\t1704103200\tclick\nu2\ti2\tnot-a-time\tbuy\nu3\ti3\t1704103200\twave\n")
    spec = load({
        "path": "{date}.tsv", "delimiter": "\\t", "header": False, "columns": ["user", "item", "ts", "action"],
        "timestamp": {"column": "ts", "unit": "s"},
        "event_type": {"column": "action", "mapping": {"click": "view", "buy": "purchase"}},
    })
    ingest_days(conn, spec, [DAY1])
    assert rows(conn, "SELECT user_id, item_id, ts, event_type FROM raw.events") == [
        ("u1", "i1", dt.datetime(2024, 1, 1, 10, 0), "view")
    ]
    assert reasons(conn) == {"bad_timestamp": 1, "unknown_event_type": 1}


def test_jsonl_with_epoch_millis(tmp_path, conn, load):
    lines = [
        json.dumps({"user": 7, "item": "x", "ts": 1704103200000}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"user": 8, "item": "y", "ts": 1704103260000, "extra": {"a": 1}}),
    ]
    (tmp_path / "2024-01-01.jsonl").write_text("\n".join(lines) + "\n\n")
    spec = load({"path": "{date}.jsonl", "format": "jsonl", "timestamp": {"column": "ts", "unit": "ms"}})
    stats = ingest_days(conn, spec, [DAY1])
    assert stats[0].lines_read == 4 and stats[0].blank_lines == 1
    assert rows(conn, "SELECT user_id, ts FROM raw.events ORDER BY 1") == [
        ("7", dt.datetime(2024, 1, 1, 10, 0)), ("8", dt.datetime(2024, 1, 1, 10, 1))
    ]
    assert reasons(conn) == {"malformed_record": 2}


def test_parquet_glob_layout_places_rows_on_their_day(tmp_path, conn, load):
    table = pa.table({
        "user": ["a", "b", "c", "d"],
        "item": ["i", "j", "k", "l"],
        "ts": ["2024-01-01T08:00:00", "2024-01-02T09:30:00", "garbage", "2024-01-02T10:00:00"],
    })
    pq.write_table(table, tmp_path / "part-0.parquet")
    spec = load({"path": "part-*.parquet", "format": "parquet", "timestamp": {"column": "ts"}})
    stats = ingest_days(conn, spec, [DAY1, DAY2])
    assert [(s.partition_date, s.accepted) for s in stats] == [(DAY1, 1), (DAY2, 2)]
    undated = rows(conn, "SELECT reason, partition_date FROM raw.rejected_events")
    assert undated == [("bad_timestamp", None)]
    ingest_days(conn, spec, [DAY1, DAY2])
    assert table_counts(conn) == (3, 1)


def test_attributes_from_a_file_with_multi_values_and_one_hot(tmp_path, conn, load):
    write_text(tmp_path / "2024-01-01.csv", "user,item,ts\nu1,m1,2024-01-01 10:00:00\nu1,m9,2024-01-01 11:00:00\n")
    write_text(tmp_path / "items.csv", """
        movie,title,genres,Action,Comedy
        m1,Heat (1995),Crime| Thriller,1,0
        m2,Toy Story,Animation,0,1
        ,orphan,x,0,0
        m2,broken,row
        m1,Heat,Crime|Thriller,1,1
        """)
    spec = load({}, items={
        "file": {"path": "items.csv"},
        "id": "movie",
        "title": "title",
        "attributes": {"genre": {"column": "genres", "delimiter": "|"}, "flags": {"one_hot": ["Action", "Comedy"]}},
    })
    ingest_days(conn, spec, [DAY1])
    stats = build_catalog(conn, spec, "items")
    assert stats.rejected == 2  # the orphan row has no id; the broken row has 3 fields, not 5
    found = rows(conn, "SELECT item_id, title, attributes['genre'], attributes['flags'], event_count FROM raw.items ORDER BY 1")
    assert found == [
        ("m1", "Heat", ["Crime", "Thriller"], ["Action", "Comedy"], 1),
        ("m2", "Toy Story", ["Animation"], ["Comedy"], 0),
        ("m9", None, None, None, 1),
    ]


def test_missing_column_is_a_clear_error(tmp_path, conn, load):
    write_text(tmp_path / "2024-01-01.csv", "user,item,when\nu,i,2024-01-01 10:00:00\n")
    with pytest.raises(SpecError, match=r"\['ts'\].*not in the file"):
        ingest_days(conn, load({}), [DAY1])


PASSWORDS = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"


def test_an_error_never_echoes_a_file_that_is_not_the_log(tmp_path, conn, load):
    """events.path pointed at a password file: with a header spec no column is there, with a
    headerless one every line is rejected; neither error quotes a line of it."""
    write_text(tmp_path / "2024-01-01.csv", PASSWORDS)
    with pytest.raises(SpecError) as header_spec:
        ingest_days(conn, load({}), [DAY1])
    assert "does not look like this log" in str(header_spec.value) and "root:x" not in str(header_spec.value)
    headerless = load({"header": False, "columns": ["user", "item", "ts"]}, max_reject_rate=0.5)
    with pytest.raises(IngestRefused) as refused:
        ingest_days(conn, headerless, [DAY1])
    assert "lines rejected, above max_reject_rate" in str(refused.value)
    assert "root:x" not in str(refused.value) and "/bin/bash" not in str(refused.value)


def test_undecodable_bytes_are_quarantined(tmp_path, conn, load):
    (tmp_path / "2024-01-01.csv").write_bytes(
        b"user,item,ts\nu1,caf\xe9,2024-01-01 10:00:00\nu2,tea,2024-01-01 10:00:00\n"
    )
    ingest_days(conn, load({}), [DAY1])
    assert table_counts(conn) == (1, 1)
    assert reasons(conn) == {"bad_encoding": 1}


def day1_events(conn):
    return rows(conn, "SELECT user_id, item_id, ts FROM raw.events WHERE partition_date = $d ORDER BY ALL", {"d": DAY1})


@pytest.mark.parametrize("damage, message", [
    ("typo", "matches no file for any date"),
    ("empty", "no data line, but the day holds"),
    ("header only", "no data line, but the day holds"),
    ("timestamp format", "rejected, above max_reject_rate 50%; mostly bad_timestamp"),
    ("truncated", "1 events, but the stored day holds 3: a drop of 67%, above max_volume_drop 50%"),
])
def test_a_stored_day_is_never_replaced_by_nothing(tmp_path, conn, load, damage, message):
    write_text(tmp_path / "2024-01-01.csv", "user,item,ts\nu1,A,2024-01-01 10:00:00\nu2,B,2024-01-01 11:00:00\n"
                                            "u3,C,2024-01-01 12:00:00\n")
    spec = load({}, max_reject_rate=0.5)
    ingest_days(conn, spec, [DAY1])
    stored = day1_events(conn)
    assert len(stored) == 3
    if damage == "typo":
        spec = load({"path": "{date}.cvs"}, max_reject_rate=0.5)
    elif damage == "empty":
        (tmp_path / "2024-01-01.csv").write_text("")
    elif damage == "header only":
        (tmp_path / "2024-01-01.csv").write_text("user,item,ts\n")
    elif damage == "truncated":  # cut inside the second line: one event is left, the cut line is rejected
        text = (tmp_path / "2024-01-01.csv").read_text()
        (tmp_path / "2024-01-01.csv").write_text(text[:text.index("u2") + 8])
    else:
        spec = load({"timestamp": {"column": "ts", "format": "%d/%m/%Y %H:%M"}}, max_reject_rate=0.5)
    with pytest.raises(IngestRefused, match=message) as refused:
        ingest_days(conn, spec, [DAY1])
    assert ("{date}.cvs" if damage == "typo" else "2024-01-01.csv") in str(refused.value)
    assert day1_events(conn) == stored, "the stored day is untouched"
    if damage != "typo":
        override = {"force": True} if damage in ("timestamp format", "truncated") else {"allow_empty": True}
        ingest_days(conn, spec, [DAY1], **override)  # the operator says so: the day is replaced
        assert len(day1_events(conn)) == (1 if damage == "truncated" else 0)


def test_refused_day_names_an_example_line_and_the_other_days_are_written(tmp_path, conn, load):
    write_text(tmp_path / "2024-01-01.csv", "user,item,ts\nu1,A,01/01/2024\nu2,B,01/01/2024\n")
    write_text(tmp_path / "2024-01-02.csv", "user,item,ts\nu3,C,2024-01-02 10:00:00\n")
    spec = load({}, max_reject_rate=0.5)
    with pytest.raises(IngestRefused, match=r"1 of 2 days not replaced:\n2024-01-01 .*line 2 \(unreadable timestamp: "
                       r"01/01/2024\), excerpt of that line: 'u1,A,01/01/2024'"):
        ingest_days(conn, spec, [DAY1, DAY2])
    assert rows(conn, "SELECT user_id FROM raw.events") == [("u3",)]


def test_an_unclosed_quote_costs_only_its_own_line(tmp_path, conn, load):
    lines = [f"u{i},A{i},2024-01-01 10:{i:02d}:00" for i in range(20)]
    lines[5] = 'u5,"A5,2024-01-01 10:05:00'  # the quote is never closed
    write_text(tmp_path / "2024-01-01.csv", "user,item,ts\n" + "\n".join(lines) + "\n")
    stats = ingest_days(conn, load({}), [DAY1])
    assert stats[0].lines_read == 20 and stats[0].accepted == 19
    assert rows(conn, "SELECT source_line, reason, raw_content FROM raw.rejected_events") == [
        (7, "malformed_record", 'u5,"A5,2024-01-01 10:05:00')]  # line 7: the header is line 1
    assert rows(conn, "SELECT max(source_line) FROM raw.events")[0][0] == 21


def test_a_bom_a_nul_byte_and_a_one_mib_field(tmp_path, conn, load):
    big = "x" * (1 << 20)
    content = ("\ufeffuser,item,ts,note\n"
               "u1,A,2024-01-01 10:00:00,short\n"
               f"u2,B,2024-01-01 10:01:00,{big}\n"
               "u3,C\x00,2024-01-01 10:02:00,nul\n"
               "u4,D,2024-01-01 10:03:00,last\n")
    (tmp_path / "2024-01-01.csv").write_bytes(content.encode("utf-8"))
    spec = load({"context": ["note"]})
    stats = ingest_days(conn, spec, [DAY1])
    assert stats[0].accepted == 3 and stats[0].rejected_by_reason == {"malformed_record": 1}
    assert rows(conn, "SELECT user_id, length(context['note']) FROM raw.events ORDER BY 1") == [
        ("u1", 5), ("u2", 1 << 20), ("u4", 4)]
    assert rows(conn, "SELECT source_line, detail FROM raw.rejected_events") == [(4, "NUL byte in the line")]


def test_nan_and_infinite_numbers_are_rejected(tmp_path, conn, load):
    write_text(tmp_path / "2024-01-01.csv", """
        user,item,ts,qty,price
        u1,A,2024-01-01 10:00:00,1,2.5
        u2,B,2024-01-01 10:00:00,nan,2.5
        u3,C,2024-01-01 10:00:00,1,inf
        u4,D,2024-01-01 10:00:00,-inf,1
        u5,E,2024-01-01 10:00:00,1e400,1
        u6,F,2024-01-01 10:00:00,2,NaN
        """)
    ingest_days(conn, load({"value": "qty", "price": "price"}), [DAY1])
    assert rows(conn, "SELECT user_id FROM raw.events") == [("u1",)]
    assert rows(conn, "SELECT source_line, reason FROM raw.rejected_events ORDER BY 1") == [
        (3, "bad_value"), (4, "bad_price"), (5, "bad_value"), (6, "bad_value"), (7, "bad_price")]


def test_days_staged_together_give_the_same_tables_as_one_by_one(conn, retail_like, monkeypatch):
    # Day 2 also holds the day-2 event that day 1's file carried by mistake: staged together, the
    # two copies must not make day 2's a duplicate (duplicates are judged within one day's file).
    day2 = retail_like.events_file_for(DAY2)
    day2.write_text(day2.read_text() + "9,E,1,2024-01-02 09:00:00,1.5,42,FR\n")
    query = """SELECT * EXCLUDE (run_id, {}) FROM raw.{} ORDER BY ALL"""
    from unirec_dagster.ingest import events as events_module

    ingest_days(conn, retail_like, [DAY1, DAY2, DAY3])
    together = [rows(conn, query.format(*t)) for t in (("ingested_at", "events"), ("rejected_at", "rejected_events"))]
    monkeypatch.setattr(events_module, "CHUNK_BYTES", 1)
    ingest_days(conn, retail_like, [DAY1, DAY2, DAY3])
    assert [rows(conn, query.format(*t)) for t in (("ingested_at", "events"), ("rejected_at", "rejected_events"))] == together
    assert dict(rows(conn, "SELECT reason, count(*) FROM raw.rejected_events WHERE partition_date = ? GROUP BY 1",
                     [DAY2])) == {}
    assert scalar(conn, "SELECT count(*) FROM raw.events WHERE partition_date = ?", [DAY2]) == 2
    assert scalar(conn, "SELECT count(*) FROM raw.ingest_log") == 3


def test_duckdb_reads_a_clean_csv_exactly_as_the_line_reader_does(tmp_path):
    from unirec_dagster.datasets.readers import _read_clean_csvs, _read_csv_by_line
    from unirec_dagster.datasets.spec import SourceFile

    path = tmp_path / "clean.csv"
    path.write_bytes("\ufeffinvoice,item,desc,user\r\n"
                     '1,A,"red, white and blue",u1\r\n'
                     '2,B,"say ""hi""",u2\r\n'
                     "3,, spaced  ,u3\r\n"
                     '4,"",crème brûlée,\r\n'
                     "5,C,x,u5".encode())
    source = SourceFile(path=str(path), format="csv", header=True)
    wanted = ["invoice", "desc", "item", "user"]
    fast = _read_clean_csvs([path], source, wanted).get(path)
    assert fast is not None  # the fast path vouched for this file
    assert fast.table.equals(_read_csv_by_line(path, source, wanted).table)
    assert fast.table.column("desc").to_pylist() == ["red, white and blue", 'say "hi"', " spaced  ", "crème brûlée", "x"]
    assert fast.table.column("_line").to_pylist() == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("body", [
    '1,A,"open quote,u1\n2,B,b,u2\n',      # an unclosed quote: only its line is rejected
    '1,A,"two\nlines",u1\n2,B,b,u2\n',     # a quoted line break is two broken lines to the line reader
    "1,A,a,u1,extra\n2,B,b,u2\n",          # a wrong field count
    "1,A,a,u1\n\n2,B,b,u2\n",              # a blank line
    "1,A,a\ru1\n2,B,b,u2\n",               # a lone carriage return
])
def test_files_duckdb_cannot_vouch_for_go_line_by_line(tmp_path, body):
    from unirec_dagster.datasets.readers import _read_clean_csvs, read_records
    from unirec_dagster.datasets.spec import SourceFile

    path = tmp_path / "dirty.csv"
    path.write_text("invoice,item,desc,user\n" + body)
    source = SourceFile(path=str(path), format="csv", header=True)
    assert _read_clean_csvs([path], source, ["invoice"]) == {}
    read = read_records(path, source, ["invoice"])
    assert "2" in read.table.column("invoice").to_pylist()  # the good line after the broken one survives


def test_a_glob_layout_is_streamed_in_batches_with_the_same_result(tmp_path, conn, load, monkeypatch):
    table = pa.table({
        "user": ["a", "b", "c", "d", "a", "e"],
        "item": ["i", "j", "k", "l", "i", "m"],
        "ts": ["2024-01-01T08:00:00", "2024-01-02T09:30:00", "garbage", "2024-01-02T10:00:00",
               "2024-01-01T08:00:00", "2024-01-01T09:00:00"],  # row 5 repeats row 1, in another batch
    })
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2)
    pq.write_table(table.slice(5), tmp_path / "part-1.parquet")  # row 6 again, in another file
    spec = load({"path": "part-*.parquet", "format": "parquet", "timestamp": {"column": "ts"}})
    query = "SELECT * EXCLUDE (run_id, rejected_at) FROM raw.rejected_events ORDER BY ALL"
    from unirec_dagster.ingest import events as events_module

    ingest_days(conn, spec, [DAY1, DAY2])
    whole = rows(conn, query), table_counts(conn)
    monkeypatch.setattr(events_module, "CHUNK_BYTES", 1)  # one row per batch
    ingest_days(conn, spec, [DAY1, DAY2])
    assert (rows(conn, query), table_counts(conn)) == whole
    assert table_counts(conn) == (4, 3)
    assert {(r[3], r[4]) for r in whole[0]} == {(5, "duplicate"), (1, "duplicate"), (3, "bad_timestamp")}
