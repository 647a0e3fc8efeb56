"""Small helpers over a DuckDB connection: the one place for transactions and fetching.

DuckDB 2.0 refuses a new statement while a result is still open, so results are always
fetched completely here rather than with fetchone().
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from unirec_dagster import settings

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(path), read_only=read_only, config=connection_config())


def connection_config() -> dict[str, str | bool | int | float | list[str]]:
    """Settings for every warehouse connection, the Dagster resource's included."""
    return {"memory_limit": settings.duckdb_memory_limit()}


def quote_identifier(name: str) -> str:
    """Quote a column name taken from a dataset spec for use in SQL."""
    return '"' + name.replace('"', '""') + '"'


def quote_path(path) -> str:
    """A file path as a SQL string literal, for the statements that take no bound parameter for
    their file (ATTACH, COPY ... TO)."""
    return "'" + str(path).replace("'", "''") + "'"


def table_name(name: str) -> str:
    """Validate a schema-qualified table name that is built into SQL text."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a valid table name: {name!r}")
    return name


class Params(dict):
    """Named parameters: fragments can be built in any order and still bind the right values."""

    def add(self, value, sql_type: str = "VARCHAR") -> str:
        """Bind `value`; the explicit type keeps DuckDB from guessing one from its neighbours."""
        name = f"p{len(self)}"
        self[name] = value
        return f"${name}::{sql_type}"


SqlParams = Sequence[Any] | Mapping[str, Any] | None  # positional (?) or named ($name) values


def rows(conn: duckdb.DuckDBPyConnection, sql: str, params: SqlParams = None) -> list[tuple]:
    return conn.execute(sql, params or []).fetchall()


def scalar(conn: duckdb.DuckDBPyConnection, sql: str, params: SqlParams = None) -> Any:
    result = rows(conn, sql, params)
    return result[0][0] if result else None


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All statements inside commit together or not at all: readers never see half a partition."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
