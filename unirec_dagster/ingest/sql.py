"""SQL expressions that map a spec's source columns onto the data contract.

Column names come from the validated spec and are quoted; every literal from the spec is
a bound parameter, collected under a generated name in a `Params` dict.
"""

from __future__ import annotations

from unirec_dagster.datasets.spec import AttributeSpec, ColumnRef, EventTypeSpec, TimestampSpec
from unirec_dagster.warehouse import Params
from unirec_dagster.warehouse import quote_identifier as q

TRUTHY = ["1", "1.0", "true", "t", "yes", "y"]


def text(column: str) -> str:
    """A source column as trimmed text, empty meaning NULL."""
    return f"NULLIF(trim({q(column)}), '')"


def identifier(ref: ColumnRef) -> str:
    expr = text(ref.column)
    if ref.strip_float_suffix:
        expr = rf"regexp_replace({expr}, '\.0+$', '')"
    if ref.lowercase:
        expr = f"lower({expr})"
    return expr


def number(column: str) -> str:
    """A numeric column; NaN, infinities and overflowing values (1e400) are no number."""
    value = f"TRY_CAST({text(column)} AS DOUBLE)"
    return f"CASE WHEN isfinite({value}) THEN {value} END"


def timestamp(spec: TimestampSpec, params: Params) -> str:
    raw = text(spec.column)
    if spec.format:
        return f"try_strptime({raw}, {params.add(spec.format)})"
    if spec.unit:
        scale = 1_000_000 if spec.unit == "s" else 1_000
        micros = f"TRY_CAST(TRY_CAST({raw} AS DOUBLE) * {scale} AS BIGINT)"
        # Bounds keep make_timestamp away from values it cannot represent (years 1 to 9999).
        return f"CASE WHEN {micros} BETWEEN -62135596800000000 AND 253402300799000000 THEN make_timestamp({micros}) END"
    return f"TRY_CAST({raw} AS TIMESTAMP)"


def event_type(spec: EventTypeSpec, params: Params) -> str:
    if spec.constant is not None:
        return params.add(spec.constant)
    fallback = params.add(spec.default) if spec.default is not None else "NULL"
    if spec.column:
        cases = " ".join(f"WHEN {params.add(k)} THEN {params.add(v)}" for k, v in spec.mapping.items())
        fallback = f"CASE {text(spec.column)} {cases} ELSE {fallback} END"
    if not spec.rules:
        return fallback
    whens = []
    for rule in spec.rules:
        col = text(rule.column)
        if rule.equals is not None:
            cond = f"{col} = {params.add(rule.equals)}"
        elif rule.one_of is not None:
            cond = f"list_contains({params.add(list(rule.one_of), 'VARCHAR[]')}, {col})"
        elif rule.starts_with is not None:
            cond = f"starts_with({col}, {params.add(rule.starts_with)})"
        elif rule.less_than is not None:
            cond = f"{number(rule.column)} < {params.add(rule.less_than, 'DOUBLE')}"
        else:
            cond = f"{number(rule.column)} > {params.add(rule.greater_than, 'DOUBLE')}"
        whens.append(f"WHEN {cond} THEN {params.add(rule.value)}")
    return f"CASE {' '.join(whens)} ELSE {fallback} END"


def string_map(columns: list[str], params: Params) -> str:
    if not columns:
        return "NULL::MAP(VARCHAR, VARCHAR)"
    keys = params.add(list(columns), "VARCHAR[]")
    values = ", ".join(text(c) for c in columns)
    return f"MAP({keys}, [{values}]::VARCHAR[])"


def attribute_values(attribute: AttributeSpec, latest, params: Params) -> str:
    """A VARCHAR[] of an attribute's values; `latest(column)` gives the SQL of a column's value."""
    if attribute.one_hot is not None:
        flags = ", ".join(
            f"CASE WHEN list_contains({params.add(TRUTHY, 'VARCHAR[]')}, lower({latest(c)})) THEN {params.add(c)} END"
            for c in attribute.one_hot
        )
        return f"list_filter([{flags}]::VARCHAR[], lambda x: x IS NOT NULL)"
    value = latest(attribute.column)
    if attribute.delimiter is not None:
        parts = f"list_transform(string_split({value}, {params.add(attribute.delimiter)}), lambda x: trim(x))"
        return f"coalesce(list_filter({parts}, lambda x: x <> ''), [])::VARCHAR[]"
    return f"CASE WHEN {value} IS NULL THEN []::VARCHAR[] ELSE [{value}]::VARCHAR[] END"
