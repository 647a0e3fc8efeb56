"""Read a source file into string columns, keeping each record's line number and original text.

Typing and validation happen later in SQL (unirec_dagster.ingest); here we only split records.
Records that cannot even be split (wrong number of fields, broken JSON, undecodable bytes) come
back as structural rejects so that every input line is accounted for.
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unirec_dagster.datasets.spec import SourceFile, SpecError

LINE_COLUMN = "_line"
RAW_COLUMN = "_raw"
PARQUET_BATCH_ROWS = 250_000  # a batch's strings stay near a few hundred MiB


@dataclass
class Reject:
    line: int
    reason: str
    detail: str
    raw: str


@dataclass
class RawRecords:
    """Records of one file: `table` has the wanted columns as strings plus _line and _raw."""

    path: Path
    table: pa.Table
    rejects: list[Reject] = field(default_factory=list)
    blank_lines: int = 0
    header_lines: int = 0

    @property
    def lines_read(self) -> int:
        return self.table.num_rows + len(self.rejects)


def physical_lines(path: Path) -> int:
    """Lines in a text file, counted from its bytes (a last line without a break counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def read_records(path: Path, source: SourceFile, wanted: list[str]) -> RawRecords:
    """Read `path` as described by `source`, keeping only the `wanted` columns."""
    return read_files([Path(path)], source, wanted)[0]


def iter_records(paths: list[Path], source: SourceFile, wanted: list[str], chunk_bytes: int) -> Iterator[list[RawRecords]]:
    """The records of `paths` in groups of about `chunk_bytes` of input, so that a large input is
    never held whole: text files grouped whole, Parquet files cut into row batches."""
    group: list[Path] = []
    size = 0
    for path in map(Path, paths):
        if source.format == "parquet":
            yield from ([records] for records in _iter_parquet(path, source, wanted, chunk_bytes))
            continue
        group.append(path)
        size += path.stat().st_size
        if size >= chunk_bytes:
            yield read_files(group, source, wanted)
            group, size = [], 0
    if group:
        yield read_files(group, source, wanted)


def read_files(paths: list[Path], source: SourceFile, wanted: list[str]) -> list[RawRecords]:
    """Read each of `paths`; CSV files that DuckDB can vouch for are read by it in one call."""
    if source.format != "csv":
        reader = {"parquet": _read_parquet, "jsonl": _read_jsonl}[source.format]
        return [reader(Path(p), source, wanted) for p in paths]
    read = _read_clean_csvs([Path(p) for p in paths], source, wanted)
    return [read.get(Path(p)) or _read_csv_by_line(Path(p), source, wanted) for p in paths]


def _table(columns: dict[str, list], lines: list[int], raws: list[str]) -> pa.Table:
    arrays = {name: pa.array(values, pa.string()) for name, values in columns.items()}
    arrays[LINE_COLUMN] = pa.array(lines, pa.int64())
    arrays[RAW_COLUMN] = pa.array(raws, pa.string())
    return pa.table(arrays)


# One field may be large (a long description); the limit only guards against a runaway parse.
csv.field_size_limit(1 << 30)


def _each_line(path: Path, encoding: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text without the line break, whether its bytes were not valid in `encoding`)
    for every physical line; a UTF-8 byte-order mark at the start of the file is dropped."""
    with open(path, "rb") as handle:
        for number, data in enumerate(handle, start=1):
            try:
                text, bad = data.decode(encoding).rstrip("\r\n"), False
            except UnicodeDecodeError:
                text, bad = data.decode(encoding, errors="replace").rstrip("\r\n"), True
            yield number, text.removeprefix("\ufeff") if number == 1 else text, bad


def _fields(text: str, delimiter: str) -> list[str]:
    """The fields of one physical line. Lines without quotes (nearly all) are split directly; a
    quoted line goes through the csv module in strict mode, so an unclosed quote is an error for
    that line alone instead of swallowing the lines after it."""
    if '"' not in text:
        return text.split(delimiter)
    return next(csv.reader([text], delimiter=delimiter, strict=True))


SHOWN_NAMES, SHOWN_NAME_CHARS = 30, 40   # a header's names quoted in an error, at most


def _positions(path: Path, names: list[str], wanted: list[str]) -> list[int]:
    """Where the `wanted` columns are among the header's `names`. An error quotes the header only
    when the file looks like the declared log (some of the spec's columns are there); a file that
    has none of them may be anything (a password file, say), and nothing of it is echoed."""
    missing = [c for c in wanted if c not in names]
    if missing and len(missing) == len(wanted):
        raise SpecError(f"{path}: none of the columns the dataset spec names ({wanted}) is in the file's first line "
                        f"({len(names)} field(s) split by the spec's delimiter): it does not look like this log. "
                        "Check events.path, the delimiter and header/columns in the spec.")
    if missing:
        shown = [n[:SHOWN_NAME_CHARS] for n in names[:SHOWN_NAMES]]
        more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
        raise SpecError(f"{path}: column(s) {missing} named in the dataset spec are not in the file; its header has "
                        f"{len(names)} columns: {shown}{more}. Fix the column names in the spec.")
    return [names.index(c) for c in wanted]


_local = threading.local()


def _reader_connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per thread, only for reading files (connections are not thread-safe)."""
    if not hasattr(_local, "conn"):
        _local.conn = duckdb.connect()
    return _local.conn


@dataclass
class _CleanText:
    names: list[str]
    data_lines: list[str]
    header_lines: int


def _clean_text(path: Path, source: SourceFile) -> _CleanText | None:
    """The file's header and data lines, when nothing in its text needs the line-by-line reader:
    valid UTF-8, no NUL byte, no blank line, no lone carriage return (which may end a record for
    DuckDB but not for the line reader). None otherwise."""
    if source.encoding.lower().replace("-", "") != "utf8":
        return None
    data = path.read_bytes()
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    header = 1 if source.header else 0
    if len(lines) <= header or any(not line.strip() or "\r" in line for line in lines):
        return None
    names = list(source.columns or [])
    if source.header:
        try:
            names = [n.strip() for n in _fields(lines[0], source.delimiter)]
        except csv.Error:
            return None
    return _CleanText(names, lines[header:], header)


def _read_clean_csvs(paths: list[Path], source: SourceFile, wanted: list[str]) -> dict[Path, RawRecords]:
    """The fast path: DuckDB's reader splits the fields of many files in one call, and Python's
    str.split keeps each line's text. A file is only read this way when the result is provably
    what the line-by-line reader gives: its text is clean (_clean_text), and DuckDB (strict,
    explicit columns) reads exactly one record per physical line, so record i is line i. The files
    left out (an unclosed quote, a wrong field count, a quoted line break) are read line by line,
    with per-line rejects."""
    texts = {path: text for path in paths if (text := _clean_text(path, source)) is not None}
    by_header: dict[tuple[str, ...], list[Path]] = {}
    for path, text in texts.items():
        by_header.setdefault(tuple(text.names), []).append(path)
    read: dict[Path, RawRecords] = {}
    for names, group in by_header.items():
        positions = _positions(group[0], list(names), wanted)
        tables = _duckdb_read(group, source, len(names), texts[group[0]].header_lines)
        if tables is None and len(group) > 1:  # one file spoils a shared read: try each alone
            tables = {}
            for path in group:
                tables |= _duckdb_read([path], source, len(names), texts[path].header_lines) or {}
        for path, table in (tables or {}).items():
            text = texts[path]
            if table.num_rows != len(text.data_lines):
                continue
            first = text.header_lines + 1
            # An empty field is '' as in the line reader (DuckDB reads it as NULL).
            arrays = {name: pc.fill_null(table.column(pos), "") for name, pos in zip(wanted, positions)}
            arrays[LINE_COLUMN] = pa.array(range(first, first + len(text.data_lines)), pa.int64())
            arrays[RAW_COLUMN] = pa.array(text.data_lines, pa.string())
            read[path] = RawRecords(path, pa.table(arrays), [], 0, text.header_lines)
    return read


def _duckdb_read(paths: list[Path], source: SourceFile, width: int, skip: int) -> dict[Path, pa.Table] | None:
    """Each file's records as `width` string columns, or None when DuckDB refuses any of them."""
    columns = {f"c{i}": "VARCHAR" for i in range(width)}
    try:
        table = _reader_connection().sql(
            """SELECT * FROM read_csv($paths, columns = $columns, header = false, skip = $skip, delim = $delim,
                   quote = '"', escape = '"', strict_mode = true, auto_detect = false, null_padding = false,
                   encoding = 'utf-8', filename = true)""",
            params={"paths": [str(p) for p in paths], "columns": columns, "skip": skip, "delim": source.delimiter},
        ).arrow().read_all()
    except (duckdb.Error, pa.ArrowException, OSError):  # raised on execution or while streaming the result
        _local.conn.close()  # a half-read result would block the connection's next query
        del _local.conn
        return None
    # Files come back whole and in order (insertion order is preserved); checked, then cut.
    files = [str(p) for p in paths]
    found = dict(zip(*(c.to_pylist() for c in pc.value_counts(table.column("filename")).flatten())))
    counts = [found.get(f, 0) for f in files]
    expected = pa.array(np.repeat(np.array(files, dtype=object), counts), pa.string())
    if sum(counts) != table.num_rows or not table.column("filename").combine_chunks().equals(expected):
        return None
    offsets = np.cumsum([0, *counts])
    return {path: table.slice(offsets[i], counts[i]).drop_columns(["filename"]) for i, path in enumerate(paths)}


def _read_csv_by_line(path: Path, source: SourceFile, wanted: list[str]) -> RawRecords:
    """Every physical line is one record or one reject, with its true line number: a record never
    spans lines, so one broken line (an unclosed quote, a NUL byte, bad bytes) costs only itself.
    A UTF-8 byte-order mark at the start of the file is dropped."""
    columns: dict[str, list] = {c: [] for c in wanted}
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[Reject] = []
    blank = 0
    names: list[str] | None = None if source.header else list(source.columns or [])
    positions = None if names is None else _positions(path, names, wanted)
    for number, text, bad_encoding in _each_line(path, source.encoding):
        if names is None:  # the header line
            try:
                names = [n.strip() for n in _fields(text, source.delimiter)]
            except csv.Error as error:
                raise SpecError(f"{path}: line 1, the header, cannot be read as the spec's format ({error})") from None
            positions = _positions(path, names, wanted)
            continue
        if not text.strip():
            blank += 1
            continue
        if bad_encoding:
            rejects.append(Reject(number, "bad_encoding", f"not valid {source.encoding}", text))
            continue
        if "\x00" in text:
            rejects.append(Reject(number, "malformed_record", "NUL byte in the line", text.replace("\x00", "\\0")))
            continue
        try:
            fields = _fields(text, source.delimiter)
        except csv.Error as error:
            rejects.append(Reject(number, "malformed_record", f"unreadable CSV line: {error}", text))
            continue
        if len(fields) != len(names):
            rejects.append(Reject(number, "wrong_column_count",
                                  f"expected {len(names)} fields, found {len(fields)}", text))
            continue
        for name, pos in zip(wanted, positions or []):
            columns[name].append(fields[pos])
        lines.append(number)
        raws.append(text)
    return RawRecords(path, _table(columns, lines, raws), rejects, blank, int(source.header and names is not None))


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _read_jsonl(path: Path, source: SourceFile, wanted: list[str]) -> RawRecords:
    columns: dict[str, list] = {c: [] for c in wanted}
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[Reject] = []
    blank = 0
    for number, text, bad_encoding in _each_line(path, source.encoding):
        if bad_encoding:
            rejects.append(Reject(number, "bad_encoding", f"not valid {source.encoding}", text))
            continue
        if not text.strip():
            blank += 1
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(number, "malformed_record", f"invalid JSON: {exc.msg}", text))
            continue
        if not isinstance(record, dict):
            rejects.append(Reject(number, "malformed_record", "a JSON line must be an object", text))
            continue
        for name in wanted:
            columns[name].append(_text(record.get(name)))
        lines.append(number)
        raws.append(text)
    return RawRecords(path, _table(columns, lines, raws), rejects, blank)


def _read_parquet(path: Path, source: SourceFile, wanted: list[str]) -> RawRecords:
    return _parquet_records(path, pq.read_table(path), wanted, first_line=1)


def _iter_parquet(path: Path, source: SourceFile, wanted: list[str], chunk_bytes: int) -> Iterator[RawRecords]:
    """A Parquet file in row batches of about `chunk_bytes` of uncompressed data, and at most
    PARQUET_BATCH_ROWS rows: dictionary-encoded columns are far smaller in the file than as the
    strings a batch becomes (10M synthetic events in two batches peaked at 6.4 GiB)."""
    file = pq.ParquetFile(path)
    meta = file.metadata
    uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    batch_rows = max(1, min(PARQUET_BATCH_ROWS, int(chunk_bytes / max(uncompressed / max(meta.num_rows, 1), 1))))
    first = 1
    for batch in file.iter_batches(batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        yield _parquet_records(path, table, wanted, first)
        first += table.num_rows


def _parquet_records(path: Path, table: pa.Table, wanted: list[str], first_line: int) -> RawRecords:
    """Rows `first_line`... of a Parquet file as records; a row's raw content is `name=value` pairs
    of all its columns, tab-separated (vectorised)."""
    _positions(path, table.column_names, wanted)
    text = {name: _column_text(table.column(name)) for name in table.column_names}
    pairs = [pc.binary_join_element_wise(pa.scalar(name), text[name], "=") for name in table.column_names]
    raw = pc.binary_join_element_wise(*pairs, "\t", null_handling="replace", null_replacement="")
    arrays = {c: text[c] for c in wanted}
    arrays[LINE_COLUMN] = pa.array(range(first_line, first_line + table.num_rows), pa.int64())
    arrays[RAW_COLUMN] = raw
    return RawRecords(path, pa.table(arrays))


def _column_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as strings; nested values as JSON, empty where null."""
    if pa.types.is_nested(column.type):
        return pa.chunked_array([pa.array([_text(v) for v in column.to_pylist()], pa.string())])
    return pc.fill_null(pc.cast(column, pa.string()), "")
