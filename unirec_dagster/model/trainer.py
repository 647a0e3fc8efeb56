"""The one training loop: pretraining and fine-tuning are both a `Task` run by `train`.

A task says what an epoch's batches are and what each batch's losses are, in the manner of PyG's
`KGEModel.loss`; the loop does the rest once: seeding, the device, warm start, the optimizer, the
autocast context (built once, as in nanoGPT's train.py), loss history, progress with rate and ETA,
timing, and early stopping on a validation metric.
A step propagates the whole KG once, or with `fanouts` embeds only what its losses read, each from
a sampled neighbourhood (`model.sampling`).

Under torch.distributed (workers started by torchrun, `training.distributed`), the same loop runs in
every worker: the step is wrapped in DistributedDataParallel, each worker computes the losses of
its shard of every batch, and the averaged gradients keep the workers' models identical.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import EncoderConfig
from unirec_dagster.model.device import choose_device
from unirec_dagster.model.encoder import GraphEncoder, Propagation, TextView
from unirec_dagster.model.sampling import NeighbourSampler, SampledEmbedding
from unirec_dagster.progress import Progress

Log = Callable[[str], None]


class Task(Protocol):
    """What one kind of training optimises. `weights` names the active losses and their weights."""

    weights: dict[str, float]
    unit: str                  # what `examples_per_epoch` counts, e.g. "edges" or "pairs"
    examples_per_epoch: int

    def start_epoch(self, generator: torch.Generator) -> Propagation | None:
        """Prepare an epoch (shuffle, resample masks); the propagation the model uses in it."""

    def batches(self, generator: torch.Generator) -> Iterator[Any]:
        """The epoch's batches; `len(batch)` examples each."""

    def loss(self, model: GraphEncoder, emb: Any, batch: Any,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Unweighted losses of a batch, keyed as in `weights`; `emb` are the step's final embeddings."""


@dataclass
class TrainSettings:
    epochs: int
    lr: float
    seed: int = 0
    device: str = "auto"
    patience: int | None = None   # with `validate`: stop after this many epochs without progress
    fanouts: list[int] | None = None  # sampled-subgraph steps (model.sampling); None: whole-graph steps


@dataclass
class TrainResult:
    model: GraphEncoder
    history: list[dict[str, float]] = field(default_factory=list)   # one row per epoch: losses (and metric)
    seconds: float = 0.0
    examples_per_second: float = 0.0
    device: str = "cpu"
    best_epoch: int = 0                                              # the epoch whose weights were kept
    world_size: int = 1                                              # processes that trained it


def build_model(graph: KnowledgeGraph, text: TextView | None, encoder: EncoderConfig, seed: int,
                initial_state: dict[str, torch.Tensor] | None = None) -> GraphEncoder:
    """A fresh encoder for the graph (seeded initialisation), warm-started from `initial_state` when given."""
    torch.manual_seed(seed)
    model = GraphEncoder(graph.num_entities, len(graph.relation_names), encoder, text.dim if text is not None else 0)
    if initial_state is not None:
        model.warm_start(initial_state)
    return model


class _Step(nn.Module):
    """One training step's forward: the propagation and the task's losses, in one module, so that
    DistributedDataParallel sees every parameter the losses use."""

    def __init__(self, model: GraphEncoder, task: Task, autocast: torch.autocast):
        super().__init__()
        self.model, self.task, self.autocast = model, task, autocast

    def forward(self, propagation, sampler, text, batch, generator) -> dict[str, torch.Tensor]:
        # sparse products stay in float32
        emb = self.model(propagation, text) if sampler is None else SampledEmbedding(self.model, sampler, text, generator)
        with self.autocast:
            return self.task.loss(self.model, emb, batch, generator)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of an epoch's shared draws: the same on every worker, whatever each drew before."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def deterministic_on_cpu(device: torch.device):
    """Bitwise-repeatable CPU training: some CPU kernels sum in thread order by default, and a 1e-8
    difference in an embedding is enough to change a ranker split downstream, so a re-run would not
    serve the same table. (On CUDA the deterministic kernels need CUBLAS_WORKSPACE_CONFIG and are
    slower: GPU runs are repeatable to rounding only.)"""
    before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train(model: GraphEncoder, task: Task, text: TextView | None, settings: TrainSettings,
          validate: Callable[[torch.Tensor], float] | None = None, log: Log | None = None,
          label: str = "training") -> TrainResult:
    """Train `model` on `task` for `settings.epochs`, or until `validate` (final embeddings ->
    metric, higher is better) has not improved for `settings.patience` epochs; then the best
    epoch's weights are kept and `history` carries the metric per epoch."""
    with deterministic_on_cpu(choose_device(settings.device)):
        return _train(model, task, text, settings, validate, log, label)


def _train(model: GraphEncoder, task: Task, text: TextView | None, settings: TrainSettings,
           validate: Callable[[torch.Tensor], float] | None, log: Log | None, label: str) -> TrainResult:
    run = _start(model, task, text, settings, log, label)
    result = TrainResult(model, device=str(run.device), world_size=run.world_size)
    best = _BestEpoch(settings.patience if validate is not None else None)
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        row, propagation = _run_epoch(run, model, task, settings, epoch, label)
        if validate is not None:
            row["validation"] = validate(model.get_embedding(propagation, run.text))
            best.update(epoch, row["validation"], model)
        result.history.append(row)
        if log and run.rank == 0:
            log(f"{label} epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
        if best.should_stop:
            break
    if best.state is not None:
        model.load_state_dict(best.state)
    result.best_epoch = best.epoch or len(result.history)
    result.seconds = time.perf_counter() - started
    result.examples_per_second = len(result.history) * task.examples_per_epoch / max(result.seconds, 1e-9)
    model.eval()
    return result


@dataclass
class _Run:
    """What every epoch of one training run uses."""

    step: nn.Module                  # the model and the task's losses (wrapped in DDP under torch.distributed)
    optimizer: torch.optim.Optimizer
    device: torch.device
    text: TextView | None            # on the model's device
    rank: int
    world_size: int
    sampling: torch.Generator        # this worker's own draws (negatives)
    progress: Progress


def _start(model: GraphEncoder, task: Task, text: TextView | None, settings: TrainSettings, log: Log | None,
           label: str) -> _Run:
    """Seed, place the model, build the optimizer and autocast once, and wrap the step for the workers."""
    torch.manual_seed(settings.seed)
    device = choose_device(settings.device)
    model.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rank, world_size = world()
    # Two streams, as DistributedSampler does it: what every worker must agree on (the epoch's masks
    # and order, so the shards batch[rank::world_size] partition the epoch) is drawn from a generator
    # seeded by (seed, epoch) alone (`epoch_generator`); what each worker samples for its own shard
    # (negatives), whose amount depends on the shard, from its own generator. One shared generator
    # let the workers' orders drift apart after the first epoch.
    sampling = torch.Generator().manual_seed(settings.seed * 1009 + rank)
    step: nn.Module = _Step(model, task, autocast)
    if world_size > 1:
        step = _distributed(step, device)
    progress = Progress(settings.epochs * task.examples_per_epoch, task.unit, log if rank == 0 else None, label=label)
    return _Run(step, torch.optim.Adam(model.parameters(), lr=settings.lr), device,
                text.for_model(model, device) if text is not None else None, rank, world_size, sampling, progress)


def _distributed(step: nn.Module, device: torch.device) -> nn.Module:
    """The step under DistributedDataParallel. `static_graph`: a task reads the same parameters at
    every step (pretraining, say, never reads the user readout), so DDP records the unused ones in
    the first step instead of searching the autograd graph at every step, as
    find_unused_parameters=True did, with its warning each run."""
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                   static_graph=True)


def _run_epoch(run: _Run, model: GraphEncoder, task: Task, settings: TrainSettings, epoch: int,
               label: str) -> tuple[dict[str, float], Propagation | None]:
    """One epoch of steps on this worker's shards: its mean losses, and the propagation it used."""
    model.train()
    shared = epoch_generator(settings.seed, epoch)
    propagation = task.start_epoch(shared)
    propagation = propagation.to(run.device) if propagation is not None else None
    sampler = None
    if settings.fanouts is not None and propagation is not None and model.propagates:
        sampler = NeighbourSampler(propagation, settings.fanouts, model.config.layers)
    totals = dict.fromkeys(task.weights, 0.0)
    steps = 0
    for batch in task.batches(shared):
        losses = run.step(propagation, sampler, run.text, batch[run.rank::run.world_size], run.sampling)
        loss = sum(task.weights[name] * value.float() for name, value in losses.items())
        _check_finite(loss, losses, label, epoch, steps + 1)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        for name, value in losses.items():
            totals[name] += value.item()
        steps += 1
        run.progress.advance(len(batch), note=f"epoch {epoch}/{settings.epochs}")
    return {"epoch": epoch, **{name: total / max(steps, 1) for name, total in totals.items()}}, propagation


def _check_finite(loss: torch.Tensor, losses: dict[str, torch.Tensor], label: str, epoch: int, step: int) -> None:
    """Fail at the step that diverged, not with NaN weights saved and served."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{label}: a non-finite loss at epoch {epoch}, step {step} ("
            + ", ".join(f"{name} {value.item():.4g}" for name, value in losses.items())
            + "); lower the learning rate or check the inputs. Nothing was saved.")


class _BestEpoch:
    """Early stopping on the validation metric (higher is better): keeps the best epoch's weights."""

    def __init__(self, patience: int | None):
        self.patience, self.best, self.epoch, self.stale = patience, -math.inf, 0, 0
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, metric: float, model: nn.Module) -> None:
        if metric > self.best:
            self.best, self.epoch, self.stale = metric, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.stale += 1

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience
