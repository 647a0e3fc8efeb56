"""Ingestion assets: raw event files into raw.events, attributes into raw.items and raw.users."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster.defs.dataset import daily_partitions, partition_days
from unirec_dagster.defs.presentation import markdown_table
from unirec_dagster.defs.resources import WAREHOUSE_POOL, DatasetResource
from unirec_dagster.ingest import build_catalog, ingest_days


@dg.asset(
    group_name="ingest",
    kinds={"duckdb"},
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=WAREHOUSE_POOL,
    code_version="1",
    check_specs=[dg.AssetCheckSpec("reject_rate", asset="raw_events",
                                   description="Share of lines quarantined stays under the spec's max_reject_rate")],
    description="Events of each day in raw.events; lines that break the contract in raw.rejected_events.",
)
def raw_events(context: dg.AssetExecutionContext, duckdb: DuckDBResource, dataset: DatasetResource):
    spec = dataset.load()
    days = partition_days(context)
    with duckdb.get_connection() as conn:
        stats = ingest_days(conn, spec, days, run_id=context.run.run_id, log=context.log.info)
    lines = sum(s.lines_read for s in stats)
    accepted = sum(s.accepted for s in stats)
    reasons: dict[str, int] = {}
    for s in stats:
        for reason, n in s.rejected_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    reject_rate = (lines - accepted) / lines if lines else 0.0
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": accepted,
        "dataset": spec.name,
        "days": len(stats),
        "lines_read": lines,
        "accepted": accepted,
        "rejected": lines - accepted,
        "rejected_by_reason": reasons,
        "days_without_file": [s.partition_date.isoformat() for s in stats if not s.file_found],
        "seconds": sum(s.seconds for s in stats),
        "per_day": markdown_table(["day", "file", "lines", "accepted", "rejected", "seconds"], (
            [s.partition_date, "yes" if s.file_found else "no file", s.lines_read, s.accepted, s.rejected,
             round(s.seconds, 2)] for s in stats)),
    })
    yield dg.AssetCheckResult(
        check_name="reject_rate",
        passed=reject_rate <= spec.max_reject_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"reject_rate": reject_rate, "max_reject_rate": spec.max_reject_rate, "by_reason": reasons},
        description=f"{reject_rate:.1%} of {lines:,} lines rejected (limit {spec.max_reject_rate:.0%})",
    )


def _catalog_asset(kind: str):
    @dg.asset(
        name=f"raw_{kind}",
        group_name="ingest",
        kinds={"duckdb"},
        deps=[raw_events],
        pool=WAREHOUSE_POOL,
        code_version="1",
        description=f"Latest attributes of every {kind[:-1]} in raw.{kind}.",
    )
    def catalog(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                dataset: DatasetResource) -> dg.MaterializeResult:
        with duckdb.get_connection() as conn:
            stats = build_catalog(conn, dataset.load(), kind, run_id=context.run.run_id)
        context.log.info(f"raw.{kind}: {stats.entities:,} rows, {stats.rejected:,} attribute rows rejected")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": stats.entities,
            "with_attributes": stats.with_attributes,
            "rejected_attribute_rows": stats.rejected,
        })

    return catalog


raw_items = _catalog_asset("items")
raw_users = _catalog_asset("users")
