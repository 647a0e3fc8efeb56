"""Ingest event files into raw.events, one day-partition per transaction.

Every input line ends in exactly one of raw.events or raw.rejected_events (with a reason), and a
day is always replaced whole: re-running or backfilling never duplicates rows, and a crash
leaves each day either as it was or fully rewritten.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from unirec_dagster.datasets import DatasetSpec, RawRecords
from unirec_dagster.datasets.readers import LINE_COLUMN, RAW_COLUMN, iter_records, physical_lines, read_files
from unirec_dagster.ingest import sql
from unirec_dagster.progress import Progress
from unirec_dagster.warehouse import Params, ensure_schema, rows, transaction

FILE_COLUMN = "_file"
DAY_COLUMN = "_day"
# A backfill reads, stages and writes days together, up to this many bytes of input files at once:
# per-call, per-statement and per-commit costs are paid per chunk, not per day, while memory stays
# bounded.
CHUNK_BYTES = 128 << 20
STRUCTURAL_SCHEMA = pa.schema(
    [("source_file", pa.string()), ("source_line", pa.int64()), ("reason", pa.string()),
     ("detail", pa.string()), ("raw_content", pa.string()), ("partition_date", pa.date32())]
)


@dataclass
class PartitionStats:
    partition_date: dt.date
    source_file: str | None
    file_found: bool
    lines_read: int = 0
    accepted: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    blank_lines: int = 0
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def _start_staging(conn: duckdb.DuckDBPyConnection) -> None:
    """Empty the staging tables; batches are then appended (_stage_batches) and checked (_check_staged)."""
    conn.execute("DROP TABLE IF EXISTS staged_typed")
    conn.execute("DROP TABLE IF EXISTS staged_structural")


def _stage_batches(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec,
                   batches: list[tuple[RawRecords, dt.date | None]]) -> None:
    """Type the records of `batches` into the temp table staged_typed (structural rejects into
    staged_structural), appending: a large input is staged batch by batch, and only DuckDB, which
    spills to disk past its memory limit, holds all of it.

    Each batch comes with its file's day in a daily layout (rows of other days are rejected as
    outside_partition), or None in a glob layout, where each row's own date is its partition.
    """
    exists = rows(conn, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'staged_typed' AND temporary")[0][0]
    verb = "INSERT INTO {} BY NAME" if exists else "CREATE TEMP TABLE {} AS"
    structural = pa.table(
        {
            "source_file": [str(b.path) for b, _ in batches for _ in b.rejects],
            "source_line": [r.line for b, _ in batches for r in b.rejects],
            "reason": [r.reason for b, _ in batches for r in b.rejects],
            "detail": [r.detail for b, _ in batches for r in b.rejects],
            "raw_content": [r.raw for b, _ in batches for r in b.rejects],
            "partition_date": [day for b, day in batches for _ in b.rejects],
        },
        schema=STRUCTURAL_SCHEMA,
    )
    conn.register("structural_arrow", structural)
    try:
        conn.execute(f"{verb.format('staged_structural')} SELECT * FROM structural_arrow")
    finally:
        conn.unregister("structural_arrow")

    tables = [b.table.append_column(FILE_COLUMN, pa.array([str(b.path)] * b.table.num_rows, pa.string()))
              .append_column(DAY_COLUMN, pa.array([day] * b.table.num_rows, pa.date32()))
              for b, day in batches]
    staged_raw = pa.concat_tables(tables) if tables else pa.table(
        {c: pa.array([], pa.string()) for c in spec.event_source_columns()}
        | {LINE_COLUMN: pa.array([], pa.int64()), RAW_COLUMN: pa.array([], pa.string()),
           FILE_COLUMN: pa.array([], pa.string()), DAY_COLUMN: pa.array([], pa.date32())})
    e = spec.events
    p = Params()
    value = sql.number(e.value.column) if e.value else "NULL::DOUBLE"
    value_raw = sql.text(e.value.column) if e.value else "NULL"
    price = sql.number(e.price.column) if e.price else "NULL::DOUBLE"
    price_raw = sql.text(e.price.column) if e.price else "NULL"
    session = sql.identifier(e.session_id) if e.session_id else "NULL"
    select = f"""
        SELECT {FILE_COLUMN} AS source_file, {LINE_COLUMN} AS source_line, {RAW_COLUMN} AS raw_content,
               {DAY_COLUMN} AS file_day,
               {sql.identifier(e.user_id)} AS user_id,
               {sql.identifier(e.item_id)} AS item_id,
               {sql.timestamp(e.timestamp, p)} AS ts,
               {sql.text(e.timestamp.column)} AS ts_raw,
               {sql.event_type(e.event_type, p)} AS event_type,
               {value} AS value, {value_raw} AS value_raw,
               {session} AS session_id,
               {price} AS price, {price_raw} AS price_raw,
               {sql.string_map(spec.context_columns(), p)} AS context
        FROM staged_raw"""
    conn.register("staged_raw", staged_raw)
    try:
        conn.execute(f"{verb.format('staged_typed')} {select}", p)
    finally:
        conn.unregister("staged_raw")


def _check_staged(conn: duckdb.DuckDBPyConnection) -> None:
    """Check the staged rows into staged_events: each row's partition and reject reason, if any.
    Duplicate lines are found within one day's file (daily) or across all files (glob)."""
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE staged_events AS
        WITH checked AS (
            SELECT *, coalesce(file_day, CAST(ts AS DATE)) AS partition_date,
                CASE
                    WHEN user_id IS NULL THEN 'missing_user_id'
                    WHEN item_id IS NULL THEN 'missing_item_id'
                    WHEN ts IS NULL THEN 'bad_timestamp'
                    WHEN event_type IS NULL THEN 'unknown_event_type'
                    WHEN value IS NULL AND value_raw IS NOT NULL THEN 'bad_value'
                    WHEN price IS NULL AND price_raw IS NOT NULL THEN 'bad_price'
                END AS reason
            FROM staged_typed
        ),
        -- Lines that occur more than once among the valid rows of one day's file (daily) or of all
        -- files (glob), with their first copy; a hash aggregate, far cheaper than a window over text.
        repeated AS (
            SELECT file_day, raw_content, min({'file': source_file, 'line': source_line}) AS first
            FROM checked WHERE reason IS NULL GROUP BY ALL HAVING count(*) > 1
        ),
        ranked AS (
            SELECT checked.*,
                CASE WHEN checked.reason IS NULL AND (source_file, source_line) <> (first.file, first.line)
                     THEN first.file || ':' || first.line END AS first_copy
            FROM checked LEFT JOIN repeated
              ON checked.reason IS NULL AND repeated.raw_content = checked.raw_content
             AND repeated.file_day IS NOT DISTINCT FROM checked.file_day
        )
        SELECT * REPLACE (
            CASE
                WHEN reason IS NOT NULL THEN reason
                WHEN CAST(ts AS DATE) <> partition_date THEN 'outside_partition'
                WHEN first_copy IS NOT NULL THEN 'duplicate'
            END AS reason),
            CASE
                WHEN reason = 'bad_timestamp' THEN 'unreadable timestamp: ' || coalesce(ts_raw, '(empty)')
                WHEN reason = 'unknown_event_type' THEN 'no event type mapping matches this row'
                WHEN reason = 'bad_value' THEN 'value is not a number: ' || value_raw
                WHEN reason = 'bad_price' THEN 'price is not a number: ' || price_raw
                WHEN reason IS NULL AND CAST(ts AS DATE) <> partition_date
                    THEN 'event date ' || CAST(ts AS DATE) || ' is not the file''s date ' || partition_date
                WHEN reason IS NULL AND first_copy IS NOT NULL THEN 'same line as ' || first_copy
            END AS detail
        FROM ranked
    """)


# `partition_date = ANY(?)` takes the list of days being written; undated glob rejects (NULL day)
# are written by _write_undated_rejects.
_INSERT_EVENTS = """
    INSERT INTO raw.events
    SELECT partition_date, user_id, item_id, ts, event_type, value, session_id, price, context,
           source_file, source_line, ?, ?
    FROM staged_events WHERE reason IS NULL AND partition_date = ANY(?)
"""
_STAGED_REJECTS = """
    SELECT partition_date, source_file, source_line, reason, detail, raw_content FROM staged_events
    WHERE reason IS NOT NULL
    UNION ALL
    SELECT partition_date, source_file, source_line, reason, detail, raw_content FROM staged_structural
"""
_INSERT_REJECTS = f"""
    INSERT INTO raw.rejected_events
    SELECT partition_date, 'events', source_file, source_line, reason, detail, raw_content, ?, ?
    FROM ({_STAGED_REJECTS}) WHERE partition_date = ANY(?)
"""
_INSERT_UNDATED_REJECTS = f"""
    INSERT INTO raw.rejected_events
    SELECT partition_date, 'events', source_file, source_line, reason, detail, raw_content, ?, ?
    FROM ({_STAGED_REJECTS}) WHERE partition_date IS NULL
"""


def _counts(conn: duckdb.DuckDBPyConnection) -> dict[dt.date, tuple[int, dict[str, int]]]:
    """Per staged day: accepted lines and rejected lines by reason."""
    found = rows(conn, """
        SELECT partition_date, coalesce(reason, ''), count(*) FROM (
            SELECT reason, partition_date FROM staged_events
            UNION ALL SELECT reason, partition_date FROM staged_structural
        ) WHERE partition_date IS NOT NULL GROUP BY ALL ORDER BY ALL""")
    by_day: dict[dt.date, dict[str, int]] = {}
    for day, reason, n in found:
        by_day.setdefault(day, {})[reason] = n
    return {day: (by_reason.pop("", 0), by_reason) for day, by_reason in by_day.items()}


def _write_partitions(conn: duckdb.DuckDBPyConnection, written: list[PartitionStats], run_id: str | None) -> None:
    """Replace the days of `written` in raw.events, raw.rejected_events and raw.ingest_log in one
    transaction: a crash leaves each day either as it was or fully rewritten."""
    if not written:
        return
    now = dt.datetime.now()
    days = [stats.partition_date for stats in written]
    with transaction(conn):
        conn.execute("DELETE FROM raw.events WHERE partition_date = ANY(?)", [days])
        conn.execute("DELETE FROM raw.rejected_events WHERE source_kind = 'events' AND partition_date = ANY(?)", [days])
        conn.execute("DELETE FROM raw.ingest_log WHERE partition_date = ANY(?)", [days])
        conn.execute(_INSERT_EVENTS, [run_id, now, days])
        conn.execute(_INSERT_REJECTS, [run_id, now, days])
        conn.executemany(
            "INSERT INTO raw.ingest_log VALUES (?, ?, ?, ?, ?, ?, MAP(?::VARCHAR[], ?::BIGINT[]), ?, ?, ?, ?)",
            [[s.partition_date, s.source_file, s.file_found, s.lines_read, s.accepted, s.rejected,
              list(s.rejected_by_reason), list(s.rejected_by_reason.values()), s.blank_lines, s.seconds, run_id, now]
             for s in written],
        )


def _check_accounted(stats: PartitionStats, batches: list[RawRecords], spec: DatasetSpec) -> None:
    """The 'nothing lost' invariant, on physical lines: every line of a text file is the header, a
    blank line, an accepted event or a rejected one."""
    read = sum(b.lines_read for b in batches)
    if read != stats.accepted + stats.rejected:
        raise RuntimeError(f"{stats.partition_date}: read {read} lines but accounted for {stats.accepted} accepted + "
                           f"{stats.rejected} rejected; refusing to write a partition that loses rows")
    if spec.events.format != "parquet":
        for b in batches:
            lines = physical_lines(b.path)
            if lines != b.header_lines + b.blank_lines + b.lines_read:
                raise RuntimeError(f"{b.path}: {lines} lines in the file but {b.header_lines} header + "
                                   f"{b.blank_lines} blank + {b.lines_read} read; refusing to write a partition "
                                   "that loses lines")


class IngestRefused(RuntimeError):
    """Some days were not replaced because what was read for them is not believable; the message
    names each day, its file and why. The other days of the run were written."""


EXCERPT_CHARS = 120   # of a rejected line quoted in a refusal


def _refusal(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, stats: PartitionStats, held: int,
             allow_empty: bool, force: bool) -> str | None:
    """Why `stats` must not replace a day that holds `held` events, or None when it may."""
    where = f"{stats.partition_date} ({stats.source_file})"
    rate = stats.rejected / stats.lines_read if stats.lines_read else 0.0
    if rate > spec.max_reject_rate and not force:
        reason, count = max(stats.rejected_by_reason.items(), key=lambda kv: kv[1])
        example = rows(conn, """
            SELECT source_line, raw_content, detail FROM (
                SELECT source_line, raw_content, detail, reason, partition_date FROM staged_events
                UNION ALL SELECT source_line, raw_content, detail, reason, partition_date FROM staged_structural)
            WHERE reason = $r AND partition_date IS NOT DISTINCT FROM $d ORDER BY source_line LIMIT 1""",
                       {"r": reason, "d": stats.partition_date})[0]
        # An excerpt only of a file that parsed as the log (its header named the spec's columns, or a
        # line was accepted): a headerless file that never did may be anything, and nothing of it is echoed.
        excerpt = (f" ({example[2][:EXCERPT_CHARS]})" if example[2] else "") + (
            f", excerpt of that line: {example[1][:EXCERPT_CHARS]!r}{' (cut)' if len(example[1]) > EXCERPT_CHARS else ''}")
        return (f"{where}: {rate:.0%} of {stats.lines_read:,} lines rejected, above max_reject_rate "
                f"{spec.max_reject_rate:.0%}; mostly {reason} ({count:,}), e.g. line {example[0]}"
                f"{excerpt if stats.accepted or spec.events.header else ''}. The stored day is kept. Fix the spec or the "
                "file, or run with force: true to accept the day as it is.")
    if stats.accepted == 0 and held and not (allow_empty or (force and stats.lines_read)):
        what = "no file" if not stats.file_found else (
            "no data line" if not stats.lines_read else f"no accepted line of {stats.lines_read:,}")
        return (f"{where}: {what}, but the day holds {held:,} events; the stored day is kept. Check events.path "
                "and the file, or run with allow_empty: true to empty the day.")
    if 0 < stats.accepted < held * (1 - spec.max_volume_drop) and not force:
        return (f"{where}: {stats.accepted:,} events, but the stored day holds {held:,}: a drop of "
                f"{1 - stats.accepted / held:.0%}, above max_volume_drop {spec.max_volume_drop:.0%} (a truncated or "
                "partial file?). The stored day is kept. Check the file, or run with force: true to replace the day.")
    return None


def _held_events(conn: duckdb.DuckDBPyConnection, days: list[dt.date]) -> dict[dt.date, int]:
    return dict(rows(conn, "SELECT partition_date, count(*) FROM raw.events WHERE partition_date = ANY(?) "
                           "GROUP BY partition_date", [days]))


def ingest_days(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, days: list[dt.date],
                run_id: str | None = None, log: Callable[[str], None] | None = None, allow_empty: bool = False,
                force: bool = False) -> list[PartitionStats]:
    """Ingest each of `days` into raw.events / raw.rejected_events, replacing those partitions.

    A day is only replaced by something believable: a missing or empty file (or one with no
    accepted line) for a day that holds events needs `allow_empty`; a reject rate above the
    spec's max_reject_rate, or a volume drop above its max_volume_drop, needs `force`. Refused days
    keep what they held; the others are written, then IngestRefused names every refused day. A path
    that matches no file for any of the days fails before anything is written.

    The steps: find the files (`_daily_paths` or the glob), read and stage them (`_stage_batches`),
    then judge and write each chunk of days (`_DayWriter.write`)."""
    ensure_schema(conn)
    writer = _DayWriter(conn, spec, run_id, log, allow_empty, force, Progress(len(days), "days", log, label="raw_events"))
    if spec.is_daily_layout:
        _ingest_daily_files(conn, spec, days, writer)
    else:
        _ingest_glob(conn, spec, days, writer, run_id)
    if writer.refused:
        raise IngestRefused(f"{len(writer.refused)} of {len(days)} days not replaced:\n" + "\n".join(writer.refused))
    return writer.results


@dataclass
class _DayWriter:
    """Judges the staged days of one chunk and writes the believable ones; keeps what it did."""

    conn: duckdb.DuckDBPyConnection
    spec: DatasetSpec
    run_id: str | None
    log: Callable[[str], None] | None
    allow_empty: bool
    force: bool
    progress: Progress
    results: list[PartitionStats] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)   # why each refused day was not replaced

    def write(self, chunk: list[PartitionStats], files: dict[dt.date, list[RawRecords]] | None,
              started: float) -> None:
        """Check what is staged, judge each day, write the believable ones together. `files` maps
        each day to its file's records (daily layout), for the line accounting; None in a glob
        layout, which is streamed."""
        conn = self.conn
        _check_staged(conn)
        counts = _counts(conn)
        held = _held_events(conn, [stats.partition_date for stats in chunk])
        seconds = (time.perf_counter() - started) / len(chunk)
        written = []
        for stats in chunk:
            stats.accepted, stats.rejected_by_reason = counts.get(stats.partition_date, (0, {}))
            stats.lines_read = stats.accepted + stats.rejected
            stats.seconds = seconds  # the day's share of its chunk
            if files is not None:
                own = files.get(stats.partition_date, [])
                stats.blank_lines = sum(b.blank_lines for b in own)
                _check_accounted(stats, own, self.spec)
            reason = _refusal(conn, self.spec, stats, held.get(stats.partition_date, 0), self.allow_empty, self.force)
            if reason:
                self.refused.append(reason)
                if self.log:
                    self.log(f"refused {reason}")
            else:
                written.append(stats)
            self.results.append(stats)
        _write_partitions(conn, written, self.run_id)
        for stats in chunk:
            self.progress.advance(1, f"{stats.partition_date}: {stats.accepted:,} accepted, {stats.rejected:,} rejected")


def _daily_paths(spec: DatasetSpec, days: list[dt.date], allow_empty: bool) -> dict[dt.date, Path]:
    """Each day's file; a path that matches no file at all fails before anything is written."""
    paths = {day: spec.events_file_for(day) for day in days}
    if not allow_empty and not spec.events_files():
        raise IngestRefused(f"events.path {spec.events.path!r} matches no file for any date ({spec.events_glob()});"
                            " nothing was written. Check the path in the dataset spec.")
    if len(days) > 1 and not allow_empty and not any(path.is_file() for path in paths.values()):
        raise IngestRefused(f"events.path {spec.events.path!r} matches no file for any of the {len(days)} days "
                            f"{days[0]}..{days[-1]} (e.g. {paths[days[0]]}); nothing was written. Check the "
                            "path, or run with allow_empty: true for days that truly have no events.")
    return paths


def _chunks_of(days: list[dt.date], paths: dict[dt.date, Path]) -> list[list[dt.date]]:
    """Consecutive days whose files add up to about CHUNK_BYTES."""
    chunks: list[list[dt.date]] = [[]]
    size = 0
    for day in days:
        if size >= CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(day)
        size += paths[day].stat().st_size if paths[day].is_file() else 0
    return chunks


def _ingest_daily_files(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, days: list[dt.date],
                        writer: _DayWriter) -> None:
    """One file per day: read, stage and write the days chunk by chunk."""
    paths = _daily_paths(spec, days, writer.allow_empty)
    wanted = spec.event_source_columns()
    for chunk in _chunks_of(days, paths):
        started = time.perf_counter()
        found = [day for day in chunk if paths[day].is_file()]
        read = dict(zip(found, read_files([paths[day] for day in found], spec.events, wanted)))
        _start_staging(conn)
        _stage_batches(conn, spec, [(records, day) for day, records in read.items()])
        writer.write([PartitionStats(day, str(paths[day]), file_found=day in read) for day in chunk],
                     {day: [read[day]] if day in read else [] for day in chunk}, started)


def _ingest_glob(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, days: list[dt.date], writer: _DayWriter,
                 run_id: str | None) -> None:
    """Files that hold many days: read them once and place each row on its own date."""
    started = time.perf_counter()
    files = spec.events_files()
    if not files and not writer.allow_empty:
        raise IngestRefused(f"events.path {spec.events.path!r} matches no file; nothing was written. Check "
                            "the glob in the dataset spec.")
    _start_staging(conn)
    for batch in iter_records(files, spec.events, spec.event_source_columns(), CHUNK_BYTES):
        _stage_batches(conn, spec, [(records, None) for records in batch])
    if days:
        writer.write([PartitionStats(day, spec.events.path, file_found=bool(files)) for day in days], None, started)
    else:
        _check_staged(conn)
    _write_undated_rejects(conn, run_id)


def _write_undated_rejects(conn: duckdb.DuckDBPyConnection, run_id: str | None) -> None:
    """Rows of a glob layout with no readable date belong to no day; they are replaced as a whole."""
    with transaction(conn):
        conn.execute("DELETE FROM raw.rejected_events WHERE source_kind = 'events' AND partition_date IS NULL")
        conn.execute(_INSERT_UNDATED_REJECTS, [run_id, dt.datetime.now()])
