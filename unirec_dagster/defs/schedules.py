"""Jobs, schedules and sensors: what the daemon runs when nobody is watching."""

import datetime as dt

import dagster as dg

from unirec_dagster import settings
from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.defs.dataset import daily_partitions, weekly_partitions
from unirec_dagster.defs.resources import DatasetResource
from unirec_dagster.evaluation.split import TEST_WINDOW_DAYS
from unirec_dagster.slots import free_stuck_slots

# model_evaluation(D) is not in the nightly job: D's test window (D+1..D+14) has not happened yet
# that night. The delayed_evaluation sensor scores it once the window's days are ingested.
nightly_assets = dg.AssetSelection.assets(
    "raw_events", "raw_items", "raw_users", "knowledge_graph", "item_text_embeddings", "finetuned_recommender",
    "recommendations", "similar_items")

# dagster/max_runtime (seconds): run monitoring ends a run past it, so a hung run cannot hold the
# warehouse pool forever (about 4x the Online Retail times in BENCHMARKS.md).
HOUR = 3600
ingest_day_job = dg.define_asset_job("ingest_day", selection=dg.AssetSelection.assets("raw_events"),
                                     partitions_def=daily_partitions, tags={"dagster/max_runtime": HOUR},
                                     description="Ingest one day's events into raw.events.")
nightly_recommendations_job = dg.define_asset_job(
    "nightly_recommendations", selection=nightly_assets, partitions_def=daily_partitions,
    tags={"dagster/max_runtime": 3 * HOUR},
    description="Ingest yesterday, refresh the KG and text view, fine-tune, evaluate, write recommendations.")
# What a new deployment runs once, for the day before its first night, after ingesting its history
# (ingest_day over the past days): the catalogs, the text view and the graph; then weekly_pretraining
# for the last complete week, so that the first nightly run fine-tunes from a pretrained start.
deployment_start_job = dg.define_asset_job(
    "deployment_start", partitions_def=daily_partitions, tags={"dagster/max_runtime": HOUR},
    selection=dg.AssetSelection.assets("raw_items", "raw_users", "item_text_embeddings", "knowledge_graph"),
    description="Once, for the day before the first night: catalogs, text view, graph.")
evaluation_job = dg.define_asset_job(
    "delayed_evaluation", selection=dg.AssetSelection.assets("model_evaluation"), partitions_def=daily_partitions,
    tags={"dagster/max_runtime": HOUR},
    description="Score a night's served table on its test window, once that window has happened.")
weekly_pretraining_job = dg.define_asset_job(
    "weekly_pretraining", selection=dg.AssetSelection.assets("pretrained_encoder"), partitions_def=weekly_partitions,
    tags={"dagster/max_runtime": 6 * HOUR},
    description="Multi-task pretraining of the graph encoder.")

NIGHTLY_DEADLINE_HOUR = settings.nightly_deadline_hour()


def nightly_request(night: dt.date, now: dt.datetime, spec: DatasetSpec,
                    deadline_hour: int = NIGHTLY_DEADLINE_HOUR) -> dg.RunRequest | dg.SkipReason:
    """The nightly run for `night` (yesterday) at `now`: at once when its file is there or the shop
    declares the day closed, else wait for the file until the deadline hour, then serve from the
    data there is (the files_arrived check fails naming the day). The run key makes it one run a night."""
    key = night.isoformat()
    if key not in daily_partitions.get_partition_keys(current_time=now):
        return dg.SkipReason(f"{key} is outside the dataset's partition calendar")
    if not spec.is_daily_layout:
        file_state = "glob layout"
    elif spec.events_file_for(night).exists():
        file_state = "arrived"
    elif spec.events.is_closed(night):
        file_state = "closed"
    elif now.hour < deadline_hour:
        return dg.SkipReason(f"waiting for {spec.events_file_for(night).name}: the night runs when it lands, at the "
                             f"latest at {deadline_hour:02d}:00")
    else:
        file_state = "missing at the deadline"
    return dg.RunRequest(run_key=key, partition_key=key, tags={"unirec/day_file": file_state})


# Hourly from 02:00 to the deadline: a late file starts the night on the first tick after it lands.
@dg.schedule(job=nightly_recommendations_job, cron_schedule=f"0 2-{NIGHTLY_DEADLINE_HOUR} * * *",
             description=f"Serves yesterday: at 02:00 when its file is there (or the day is declared closed), "
                         f"else on the first hourly tick after it lands, at the latest at "
                         f"{NIGHTLY_DEADLINE_HOUR:02d}:00 (UNIREC_NIGHTLY_DEADLINE_HOUR) from the data there is.")
def nightly_schedule(context: dg.ScheduleEvaluationContext, dataset: DatasetResource):
    now = context.scheduled_execution_time
    return nightly_request((now - dt.timedelta(days=1)).date(), now, dataset.load())


# Sundays 01:00, for the week that ended on Saturday (before that night's nightly run at 02:00).
weekly_pretraining_schedule = dg.build_schedule_from_partitioned_job(
    weekly_pretraining_job, hour_of_day=1, name="weekly_pretraining_schedule",
    description="Sundays 01:00: pretrain on the week that just ended (Sunday to Saturday).")


@dg.sensor(job=ingest_day_job, minimum_interval_seconds=300,
           description="Ingests a file that lands after its night ran (later than the nightly deadline, or a "
                       "re-export of an older day); yesterday's file is the nightly run's. Daily layouts only.")
def new_event_file_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource):
    spec = dataset.load()
    if not spec.is_daily_layout:
        return dg.SkipReason("the dataset's events are a glob layout, not one file per day")
    seen = set(filter(None, (context.cursor or "").split(",")))
    nightly_owns_from = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()  # one owner a day
    requests = []
    for key in daily_partitions.get_partition_keys():
        if key < nightly_owns_from and key not in seen and spec.events_file_for(dt.date.fromisoformat(key)).exists():
            requests.append(dg.RunRequest(run_key=key, partition_key=key))
            seen.add(key)
    context.update_cursor(",".join(sorted(seen)))
    return requests or dg.SkipReason("no new event files")


def nights_to_evaluate(instance: dg.DagsterInstance, window_days: int = TEST_WINDOW_DAYS) -> list[tuple[str, int]]:
    """(night, the storage id of its served table's materialization), oldest first, for each night
    whose `recommendations` exist, whose test window's days (night+1..night+window_days) are all
    ingested, and whose `model_evaluation` is older than its served table (or missing): a table
    re-served by a backfill is scored again. A day that never arrives keeps its nights unscored."""
    served = instance.get_latest_storage_id_by_partition(dg.AssetKey("recommendations"),
                                                         dg.DagsterEventType.ASSET_MATERIALIZATION)
    evaluated = instance.get_latest_storage_id_by_partition(dg.AssetKey("model_evaluation"),
                                                            dg.DagsterEventType.ASSET_MATERIALIZATION)
    ingested = instance.get_materialized_partitions(dg.AssetKey("raw_events"))
    ready = []
    for night, storage_id in sorted(served.items()):
        day = dt.date.fromisoformat(night)
        window = {(day + dt.timedelta(days=i)).isoformat() for i in range(1, window_days + 1)}
        if window <= ingested and evaluated.get(night, -1) < storage_id:
            ready.append((night, storage_id))
    return ready


@dg.sensor(job=evaluation_job, minimum_interval_seconds=600, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Scores each served night once its test window has been ingested (model_evaluation of "
                       "night D after day D+14 arrives), so served quality is measured every night, unattended.")
def delayed_evaluation_sensor(context: dg.SensorEvaluationContext):
    ready = nights_to_evaluate(context.instance)
    # A few per tick: a fresh deployment with a backfilled history catches up over several ticks.
    requests = [dg.RunRequest(run_key=f"{night}@{storage_id}", partition_key=night) for night, storage_id in ready[:3]]
    return requests or dg.SkipReason("no served night has a complete, unscored test window")


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Frees concurrency-pool slots held by runs that were killed or ended without releasing "
                       "them, so the next warehouse writer never waits on a dead run (unirec_dagster.slots).")
def free_stuck_slots_sensor(context: dg.SensorEvaluationContext):
    freed = free_stuck_slots(context.instance, log=context.log.warning)
    return dg.SkipReason(f"freed {len(freed)} stuck slot(s)" if freed else "no stuck slots")


@dg.definitions
def orchestration() -> dg.Definitions:
    return dg.Definitions(jobs=[ingest_day_job, deployment_start_job, nightly_recommendations_job, evaluation_job,
                                weekly_pretraining_job],
                          schedules=[nightly_schedule, weekly_pretraining_schedule],
                          sensors=[new_event_file_sensor, delayed_evaluation_sensor, free_stuck_slots_sensor])
