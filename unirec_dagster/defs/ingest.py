"""Ingestion assets: raw event files into raw.events, attributes into raw.items and raw.users."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from unirec_dagster.defs.dataset import daily_partitions, partition_days
from unirec_dagster.defs.presentation import markdown_table
from unirec_dagster.defs.resources import OWNERS, WAREHOUSE_POOL, DatasetResource, served_by_morning, warehouse_table
from unirec_dagster.ingest import build_catalog, ingest_days


class IngestConfig(dg.Config):
    allow_empty: bool = False  # let a missing or empty file replace a day that holds events
    force: bool = False        # let a day over max_reject_rate replace what the day holds


# Outside Dagster: the shop's export writes these files; shown upstream of raw_events in the lineage.
event_files = dg.AssetSpec(
    "event_files", group_name="ingest", owners=OWNERS,
    description="The shop's event files, as the dataset spec's events.path names them (UNIREC_DATASET): one "
                "file per day or a glob. Written by the shop's export, not by Dagster; raw_events reads them.")


@dg.asset(
    group_name="ingest", owners=OWNERS,
    kinds={"duckdb"},
    metadata=warehouse_table("raw.events"),
    deps=[event_files],
    freshness_policy=served_by_morning(),  # yesterday is ingested by the nightly run
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=WAREHOUSE_POOL,
    code_version="1",
    check_specs=[dg.AssetCheckSpec("reject_rate", asset="raw_events", blocking=True,
                                   description="Every day's share of quarantined lines is under the spec's "
                                               "max_reject_rate (or the run forced it)."),
                 dg.AssetCheckSpec("files_arrived", asset="raw_events",
                                   description="Every day of the run has its file, unless the spec declares the "
                                               "day closed (events.closed): a day that should have a file and has "
                                               "none fails, naming the day. The night still serves, from the "
                                               "data it has.")],
    description="Events of each day in raw.events; lines that break the contract in raw.rejected_events. A day "
                "that holds events is never replaced by nothing or by mostly rejects (see the run config).",
)
def raw_events(context: dg.AssetExecutionContext, config: IngestConfig, duckdb: DuckDBResource,
               dataset: DatasetResource):
    spec = dataset.load()
    days = partition_days(context)
    with duckdb.get_connection() as conn:
        stats = ingest_days(conn, spec, days, run_id=context.run_id, log=context.log.info,
                            allow_empty=config.allow_empty, force=config.force)
    lines = sum(s.lines_read for s in stats)
    accepted = sum(s.accepted for s in stats)
    reasons: dict[str, int] = {}
    for s in stats:
        for reason, n in s.rejected_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    reject_rate = (lines - accepted) / lines if lines else 0.0
    worst = max(stats, key=lambda s: s.rejected / s.lines_read if s.lines_read else 0.0)
    worst_rate = worst.rejected / worst.lines_read if worst.lines_read else 0.0
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
    missing = [s.partition_date.isoformat() for s in stats
               if not s.file_found and spec.is_daily_layout and not spec.events.is_closed(s.partition_date)]
    yield dg.AssetCheckResult(
        check_name="files_arrived", passed=not missing,
        metadata={"missing_days": missing, "days": len(stats)},
        description=(f"no file for {', '.join(missing)}, a day the spec does not declare closed: the nights "
                     "after it serve without that day's events (its file re-ingests the day when it lands)"
                     if missing else "every open day's file arrived"))
    yield dg.AssetCheckResult(
        check_name="reject_rate",
        passed=worst_rate <= spec.max_reject_rate or config.force,
        metadata={"reject_rate": reject_rate, "worst_day": worst.partition_date.isoformat(),
                  "worst_day_reject_rate": worst_rate, "max_reject_rate": spec.max_reject_rate,
                  "forced": config.force, "by_reason": reasons},
        description=f"{reject_rate:.1%} of {lines:,} lines rejected; worst day {worst.partition_date} "
                    f"{worst_rate:.1%} (limit {spec.max_reject_rate:.0%}{', forced' if config.force else ''})",
    )


def _catalog_asset(kind: str):
    @dg.asset(
        name=f"raw_{kind}",
        group_name="ingest", owners=OWNERS,
        kinds={"duckdb"},
        metadata=warehouse_table(f"raw.{kind}"),
        deps=[raw_events],
        pool=WAREHOUSE_POOL,
        code_version="1",
        description=f"Latest attributes of every {kind[:-1]} in raw.{kind}.",
    )
    def catalog(context: dg.AssetExecutionContext, duckdb: DuckDBResource,
                dataset: DatasetResource) -> dg.MaterializeResult:
        with duckdb.get_connection() as conn:
            stats = build_catalog(conn, dataset.load(), kind, run_id=context.run_id)
        context.log.info(f"raw.{kind}: {stats.entities:,} rows, {stats.rejected:,} attribute rows rejected")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": stats.entities,
            "with_attributes": stats.with_attributes,
            "rejected_attribute_rows": stats.rejected,
        })

    return catalog


raw_items = _catalog_asset("items")
raw_users = _catalog_asset("users")
