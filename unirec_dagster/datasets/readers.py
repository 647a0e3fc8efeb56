"""Read a source file into string columns, keeping each record's line number and original text.

Typing and validation happen later in SQL (unirec_dagster.ingest); here we only split records.
Records that cannot even be split (wrong number of fields, broken JSON, undecodable bytes) come
back as structural rejects so that every input line is accounted for.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unirec_dagster.datasets.spec import SourceFile, SpecError

LINE_COLUMN = "_line"
RAW_COLUMN = "_raw"


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

    @property
    def lines_read(self) -> int:
        return self.table.num_rows + len(self.rejects)


def read_records(path: Path, source: SourceFile, wanted: list[str]) -> RawRecords:
    """Read `path` as described by `source`, keeping only the `wanted` columns."""
    reader = {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}[source.format]
    return reader(Path(path), source, wanted)


def _table(columns: dict[str, list], lines: list[int], raws: list[str]) -> pa.Table:
    arrays = {name: pa.array(values, pa.string()) for name, values in columns.items()}
    arrays[LINE_COLUMN] = pa.array(lines, pa.int64())
    arrays[RAW_COLUMN] = pa.array(raws, pa.string())
    return pa.table(arrays)


class _LineRecorder:
    """Feeds decoded lines to csv.reader and remembers them, so each record's raw text is known."""

    def __init__(self, handle, encoding: str):
        self._handle = handle
        self._encoding = encoding
        self._lines: list[str] = []
        self.bad_encoding = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        data = next(self._handle)
        try:
            line = data.decode(self._encoding)
        except UnicodeDecodeError:
            line = data.decode(self._encoding, errors="replace")
            self.bad_encoding = True
        self._lines.append(line)
        return line

    def take(self) -> tuple[str, bool]:
        text = "".join(self._lines).rstrip("\r\n")
        bad = self.bad_encoding
        self._lines.clear()
        self.bad_encoding = False
        return text, bad


def _read_csv(path: Path, source: SourceFile, wanted: list[str]) -> RawRecords:
    with open(path, "rb") as handle:
        recorder = _LineRecorder(handle, source.encoding)
        reader = csv.reader(recorder, delimiter=source.delimiter)
        if source.header:
            try:
                names = [n.strip() for n in next(reader)]
            except StopIteration:
                names = list(source.columns or wanted)
            recorder.take()
        else:
            names = list(source.columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise SpecError(
                f"{path}: column(s) {missing} named in the dataset spec are not in the file;"
                f" the file has {names}. Fix the column names in the spec."
            )
        positions = [names.index(c) for c in wanted]
        width = len(names)
        columns: dict[str, list] = {c: [] for c in wanted}
        lines: list[int] = []
        raws: list[str] = []
        rejects: list[Reject] = []
        blank = 0
        for fields in reader:
            line = reader.line_num
            text, bad_encoding = recorder.take()
            if not fields:
                blank += 1
                continue
            if bad_encoding:
                rejects.append(Reject(line, "bad_encoding", f"not valid {source.encoding}", text))
            elif len(fields) != width:
                rejects.append(Reject(line, "wrong_column_count", f"expected {width} fields, found {len(fields)}", text))
            else:
                for name, pos in zip(wanted, positions):
                    columns[name].append(fields[pos])
                lines.append(line)
                raws.append(text)
    return RawRecords(path, _table(columns, lines, raws), rejects, blank)


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
    with open(path, "rb") as handle:
        for number, data in enumerate(handle, start=1):
            try:
                text = data.decode(source.encoding).rstrip("\r\n")
            except UnicodeDecodeError:
                rejects.append(Reject(number, "bad_encoding", f"not valid {source.encoding}",
                                      data.decode(source.encoding, errors="replace").rstrip("\r\n")))
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
    table = pq.read_table(path)
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise SpecError(
            f"{path}: column(s) {missing} named in the dataset spec are not in the file;"
            f" the file has {table.column_names}. Fix the column names in the spec."
        )
    # Vectorised: a row's raw content is `name=value` pairs of all its columns, tab-separated.
    text = {name: _column_text(table.column(name)) for name in table.column_names}
    pairs = [pc.binary_join_element_wise(pa.scalar(name), text[name], "=") for name in table.column_names]
    raw = pc.binary_join_element_wise(*pairs, "\t", null_handling="replace", null_replacement="")
    arrays = {c: text[c] for c in wanted}
    arrays[LINE_COLUMN] = pa.array(range(1, table.num_rows + 1), pa.int64())
    arrays[RAW_COLUMN] = raw
    return RawRecords(path, pa.table(arrays))


def _column_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as strings; nested values as JSON, empty where null."""
    if pa.types.is_nested(column.type):
        return pa.chunked_array([pa.array([_text(v) for v in column.to_pylist()], pa.string())])
    return pc.fill_null(pc.cast(column, pa.string()), "")
