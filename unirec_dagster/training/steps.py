"""The pipeline's training steps as plain functions (the Dagster assets call these; tests too):
pretraining, and fine-tuning with its quality gate and ablations. Each returns what it made (a
checkpoint, a gate verdict), not a path to open again. Serving's policy is rebuilt from the
checkpoint in `serving.policy`; the evaluation step is `evaluation.steps`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import duckdb
import torch

from unirec_dagster.datasets import DatasetSpec
from unirec_dagster.evaluation.split import load_holdout
from unirec_dagster.features import text_view
from unirec_dagster.graph import entity_fingerprint, load_graph, snapshot_params
from unirec_dagster.history import CutoffStats, TrainingData, load_stats, load_training, never_recommended, unsold_until
from unirec_dagster.model.checkpoint import (
    FINETUNED,
    FROM_SCRATCH,
    MF_ABLATION,
    PRETRAINED,
    Checkpoint,
    CheckpointStore,
    check_compatible,
)
from unirec_dagster.model.config import EncoderConfig, FinetuneConfig, PretrainConfig
from unirec_dagster.model.encoder import TextView
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.model.trainer import Log, TrainResult
from unirec_dagster.ranking.classic import TunedClassic
from unirec_dagster.ranking.inputs import cutoff_inputs
from unirec_dagster.ranking.ranker import TooFewExamples
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.ranking.two_stage import PLACEMENT_FILE, RANKER_FILE
from unirec_dagster.training.classic import tune_classic
from unirec_dagster.training.fit import (
    FittedRecommender,
    ValidationSplit,
    VariantTrainer,
    cutoff_data,
    fit_recommender,
    train_variant,
    validation_split,
)
from unirec_dagster.training.gate import GateResult, judge_on_validation
from unirec_dagster.training.ranking import (
    EarlierWindow,
    RankingSettings,
    TwoStageFit,
    fit_two_stage,
    hidden_purchases,
    simulate_new_items,
)
from unirec_dagster.warehouse import rows

# Fine-tuning of day D takes the newest pretrained partition in [D - 27, D]: pretraining is weekly,
# and one failed week must not stop a month of nightly runs; the pretrained_age check warns past a week.
PRETRAINED_WINDOW_DAYS = 28
PRETRAINED_FRESH_DAYS = 7


def _fingerprint(conn: duckdb.DuckDBPyConnection):
    return lambda n: entity_fingerprint(conn, n)


def text_model_name(conn: duckdb.DuckDBPyConnection, named: str | None) -> str | None:
    """The text model a checkpoint records: the one named, or the only one in the warehouse."""
    if named:
        return named
    found = rows(conn, "SELECT DISTINCT model FROM features.text_embeddings")
    return found[0][0] if len(found) == 1 else None


def validation_days(conn: duckdb.DuckDBPyConnection, run_date: dt.date) -> int:
    """The validation window of the models of `run_date`, as the knowledge_graph partition chose it."""
    return snapshot_params(conn, run_date).validation_days


Pretrainer = Callable[..., TrainResult]  # pretrain's signature: in process, or workers it launches


def run_pretraining(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, config: PretrainConfig,
                    store: CheckpointStore, log: Log | None = None, pretrainer: Pretrainer = pretrain,
                    text_model: str | None = None) -> Checkpoint:
    """Pretrain on the KG as of run_date - validation_days (so fine-tuning's validation window stays
    unseen), warm-started from the newest pretrained checkpoint of an earlier partition.
    `pretrainer` trains: `pretrain` in this process, or a launcher of distributed workers.
    `text_model` names the text view's model (None: the only one in the warehouse).

    The weekly run for the week ending on Saturday S starts at 01:00 on Sunday, before that night's
    graph is built: it trains on the validation snapshot of the newest night built up to S (S itself
    when its graph is there, else usually Friday's), which that night's knowledge_graph run wrote
    beside its own, so it always exists; no later fine-tuning's validation window is seen."""
    newest = rows(conn, "SELECT max(snapshot_date) FROM kg.snapshots WHERE snapshot_date <= $d", {"d": run_date})[0][0]
    if newest is None:
        raise LookupError(f"no KG snapshot up to {run_date} in the warehouse: materialize the knowledge_graph "
                          f"partition {run_date} (or an earlier day) first")
    as_of = newest - dt.timedelta(days=validation_days(conn, newest))
    graph = load_graph(conn, as_of)
    text = text_view(conn, text_model) if config.encoder.use_text else None
    previous = store.latest(PRETRAINED, partition_before=run_date)
    if previous is not None:
        check_compatible(previous, _fingerprint(conn))
        if log:
            log(f"warm start from {previous.version} ({previous.manifest['num_entities']:,} entities; "
                f"{graph.num_entities - previous.manifest['num_entities']:,} new)")
    result = pretrainer(graph, text, config, spec.events.positive_event_type, previous.state if previous else None, log)
    return store.save(
        PRETRAINED, run_date, result.model, as_of, graph.relation_names, entity_fingerprint(conn, graph.num_entities),
        config=config.model_dump(), parent=previous.version if previous else None, history=result.history,
        final_losses={k: v for k, v in result.history[-1].items() if k != "epoch"}, seconds=result.seconds,
        edges_per_second=result.examples_per_second, device=result.device,
        relation_weights=result.model.relation_weights(graph.relation_names), world_size=result.world_size,
        text_model=text_model_name(conn, text_model) if text is not None else None)


@dataclass
class FinetuningResult:
    checkpoint: Checkpoint                 # what serves: the graph model, its ranker and the tuned peers
    gate: GateResult
    ablations: dict[str, Checkpoint] = field(default_factory=dict)
    ranking: TwoStageFit | None = None
    # what the night was fitted from, for benchmarks that refit parts of it (ablations)
    validation: ValidationSplit | None = None
    fitted: dict[str, FittedRecommender] = field(default_factory=dict)   # FINETUNED and the variants
    classic: TunedClassic | None = None


def mf_config(config: FinetuneConfig) -> FinetuneConfig:
    """EVALUATION.md's BPR-MF: the same trainer with no graph, no text, no pretraining and the BPR
    loss (4x cheaper per epoch than the softmax)."""
    return config.model_copy(update={"loss": "bpr", "encoder": EncoderConfig(
        dim=config.encoder.dim, layers=0, use_graph=False, use_text=False, user_readout=False)})


def _share_of(users: torch.Tensor, among: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """(len(among),) bool: a seeded `share` of `users` (the validation users), where they are in `among`."""
    chosen = users[torch.randperm(len(users), generator=torch.Generator().manual_seed(seed))[:round(share * len(users))]]
    return torch.isin(among, chosen)


def excluded_from_examples(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, data: TrainingData, end: dt.date,
                           exclude_unsold: bool) -> torch.Tensor:
    """Positions of `data`'s items left out of a window's examples: the never-recommended ones, and
    with `exclude_unsold` the ones unsold even by the window's `end` (see unsold_until)."""
    never = never_recommended(conn, spec, data.items)
    if exclude_unsold:
        never = torch.cat([never, unsold_until(conn, spec, data.items, end)]).unique()
    return never


def earlier_window_data(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, validation: ValidationSplit,
                        settings: RankingSettings) -> list[tuple[TrainingData, dt.date]]:
    """What was known at the start of each of the `settings.windows - 1` windows before the
    validation window (each `window_step_days` earlier, as long), with the window's end."""
    length = validation.cutoff - validation.known.cutoff
    starts = [validation.known.cutoff - dt.timedelta(days=j * settings.window_step_days)
              for j in range(1, settings.windows)]
    return [(load_training(conn, spec, start, catalog_until=start + length), start + length) for start in starts]


def fit_ranking(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, validation: ValidationSplit,
                fitted: FittedRecommender, text: TextView | None, classic: TunedClassic, settings: RankingSettings,
                log: Log | None = None, stats: CutoffStats | None = None) -> tuple[TwoStageFit | None, str]:
    """The two-stage ranker fitted on the validation window (None and the reason when the window
    holds too few users for it). `stats`: the validation cutoff's statistics, when loaded already."""
    known = validation.known
    inputs = cutoff_inputs(conn, spec, known.signals, known.graph if settings.use_attributes else None,
                           fitted.validation_embeddings if settings.use_model else None, text, classic.params, stats)
    simulated, simulated_holdout, left_out = None, None, None
    if settings.simulated_new_items > 0:
        model = fitted.validation_model

        def embed(hidden: torch.Tensor) -> torch.Tensor:
            assert model is not None
            return model.embed_graph(known.graph.without_interactions(hidden), text)

        simulated, hidden = simulate_new_items(inputs, settings.simulated_new_items, settings.ranker.seed,
                                               embed if model is not None else None)
        # A real new item has no earlier buyers: a hidden item is not offered to the users who bought
        # it, and the window's pairs are the real ones. (With `simulated_repeat_buyers` those users
        # forget it, and buying it again is a pair.)
        if settings.simulated_repeat_buyers:
            window = load_holdout(conn, spec, known.data, validation.cutoff, forgotten=known.data.items[hidden])
        else:
            window, left_out = validation.holdout, hidden_purchases(known.data, hidden)
        simulated_holdout = window.subset(_share_of(validation.holdout.users, window.users,
                                                    settings.simulated_users, settings.ranker.seed),
                                          torch.ones(len(window.pair_items), dtype=torch.bool))

    def excluded(data: TrainingData, end: dt.date) -> torch.Tensor:
        return excluded_from_examples(conn, spec, data, end, settings.exclude_unsold)

    # Earlier windows read their item attributes from the validation window's KG: they are the
    # catalog's, and the time-bound edges are the graph model's, which those windows do without.
    earlier = [EarlierWindow(cutoff_inputs(conn, spec, Signals(data), known.graph if settings.use_attributes else None,
                                           None, text, classic.params),
                             load_holdout(conn, spec, data, end), excluded(data, end))
               for data, end in earlier_window_data(conn, spec, validation, settings)]
    try:
        return fit_two_stage(inputs, validation.holdout, settings.candidates, settings.ranker,
                             never=excluded(known.data, validation.cutoff), log=log, simulated=simulated,
                             simulated_holdout=simulated_holdout, earlier=earlier,
                             simulated_trains_ranker=settings.simulated_trains_ranker,
                             simulated_left_out=left_out), ""
    except TooFewExamples as error:
        if log:
            log(f"no two-stage ranker: {error}")
        return None, str(error)


def run_finetuning(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, run_date: dt.date, config: FinetuneConfig,
                   store: CheckpointStore, from_scratch: bool = False, log: Log | None = None,
                   trainer: VariantTrainer = train_variant, ranking: RankingSettings = RankingSettings(),
                   mf_ablation: bool = False, text_model: str | None = None) -> FinetuningResult:
    """Fine-tune the graph model for serving on run_date (cutoff = the next day) from the newest
    pretrained checkpoint of the last PRETRAINED_WINDOW_DAYS, tune the classic peers and fit the
    two-stage ranker on the validation window, and let the gate choose what serves. BPR-MF
    (`mf_ablation`) and the full model without pretraining (`from_scratch`) are trained on the same
    splits and kept for the evaluation. `trainer` trains each model: `train_variant` in this
    process, or a launcher of distributed workers."""
    cutoff = run_date + dt.timedelta(days=1)
    start = store.latest(PRETRAINED, run_date, partition_from=run_date - dt.timedelta(days=PRETRAINED_WINDOW_DAYS - 1))
    if start is None:
        raise LookupError(f"no pretrained checkpoint of a partition in "
                          f"{run_date - dt.timedelta(days=PRETRAINED_WINDOW_DAYS - 1)}.."
                          f"{run_date} in {store.root}: materialize pretrained_encoder for one of those days first")
    validation = validation_split(conn, spec, cutoff, validation_days(conn, run_date))
    check_compatible(start, _fingerprint(conn))
    if start.snapshot_date >= validation.known.cutoff:
        raise ValueError(f"{start.version} saw the KG of {start.snapshot_date}, inside the validation window "
                         f"from {validation.known.cutoff}: its knowledge_graph partition used another validation_days")
    final = cutoff_data(conn, spec, cutoff)
    text = text_view(conn, text_model) if config.encoder.use_text else None
    fitted = fit_recommender(validation, final, config, text, start.state, log=log, trainer=trainer)
    classic = tune_classic(validation.known.signals, validation.holdout, log=log)
    # The validation signals with the tuned peers' parameters, once: the ranker's inputs and the gate
    # share their fitted EASE^R and RP3beta weights instead of fitting them again each.
    validation = replace(validation, known=replace(validation.known,
                                                   signals=validation.known.signals.with_classic(classic.params)))
    stats = load_stats(conn, spec, validation.known.data)
    two_stage, note = fit_ranking(conn, spec, validation, fitted, text, classic, ranking, log=log, stats=stats)
    gate = judge_on_validation(validation.holdout, validation.known.signals, classic, stats,
                               two_stage.validation_top if two_stage else None, note, log,
                               excluded=two_stage.excluded if two_stage else None)
    variants = {}
    if mf_ablation:
        variants[MF_ABLATION] = fit_recommender(validation, final, mf_config(config), None, None, blend=False,
                                                log=log, trainer=trainer)
    if from_scratch:
        variants[FROM_SCRATCH] = fit_recommender(validation, final, config, text, None, log=log, trainer=trainer)
    fingerprint = entity_fingerprint(conn, final.graph.num_entities)

    def save(kind: str, fit: FittedRecommender, variant_config: FinetuneConfig, **extra) -> Checkpoint:
        return store.save(
            kind, run_date, fit.model, run_date, final.graph.relation_names, fingerprint,
            config=variant_config.model_dump(), cutoff=cutoff.isoformat(),
            validation_cutoff=validation.known.cutoff.isoformat(), blend=fit.blend, best_epoch=fit.best_epoch,
            validation=fit.validation, history=fit.history, seconds=fit.seconds,
            device=str(next(fit.model.parameters()).device), world_size=fit.world_size,
            text_model=text_model_name(conn, text_model) if text is not None else None, **extra)

    ablations = {kind: save(kind, fit, mf_config(config) if kind == MF_ABLATION else config, parent=None)
                 for kind, fit in variants.items()}
    about_ranking = None
    if two_stage is not None:
        r = two_stage.fit.ranker
        placement = two_stage.placement
        kept = two_stage.fit.config
        about_ranking = {**ranking.model_dump(), "rounds": r.rounds, "cv_ndcg": r.cv_ndcg,
                         "ranker_kept": kept.model_dump() if kept is not None else None,
                         "placement": {"rounds": placement.rounds, "scale": placement.scale,
                                       "shift": placement.shift, "every": placement.every}
                         if placement is not None else None,
                         "validation": two_stage.validation, "candidate_recall": two_stage.candidate_recall,
                         "candidates_per_user": round(two_stage.candidates_per_user, 1),
                         "examples": two_stage.examples, "importances": r.importances(), "cv_curve": two_stage.fit.curve}
    checkpoint = save(FINETUNED, fitted, config, parent=start.version,
                      promoted=True, policy=gate.policy, gate=gate.to_manifest(), classic=classic.to_manifest(),
                      ranking=about_ranking,
                      files=({RANKER_FILE: two_stage.fit.ranker.to_text()}
                             | ({PLACEMENT_FILE: two_stage.placement.to_text()} if two_stage.placement else {}))
                      if two_stage is not None else None)
    return FinetuningResult(checkpoint, gate, ablations, two_stage, validation, {FINETUNED: fitted, **variants},
                            classic)
