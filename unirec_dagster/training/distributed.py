"""Data-parallel pretraining and fine-tuning with torch.distributed: job folders and the workers.

With world_size > 1 the assets write a job folder (`write_job`): the KG snapshot and the text view
as safetensors, the initial weights, the task's own tensors (fine-tuning: its training pairs and
signals' inputs, and the validation window), the settings as JSON. They then start `world_size`
workers through Dagster Pipes:

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m unirec_dagster.training.distributed --job DIR

Each worker joins the process group (gloo on CPU, NCCL on CUDA, one GPU per worker) and runs the
one training loop under DistributedDataParallel on its shard of every batch; fine-tuning's workers
each validate the same weights, so they stop at the same epoch. Rank 0 writes the trained weights
and the loss history back into the folder (`read_result`) and reports progress and a summary to
Dagster through Pipes. The same module runs unchanged under PipesK8sClient or any other Pipes
client on a cluster, given the job folder on shared storage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
from safetensors.torch import load_file, save_file

from unirec_dagster.evaluation.split import HoldoutPairs
from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.graph.loader import load_graph_file, save_graph_file
from unirec_dagster.history import TrainingData
from unirec_dagster.model.config import EncoderConfig, FinetuneConfig, PretrainConfig
from unirec_dagster.model.encoder import TextView
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.model.trainer import Log, TrainResult, build_model
from unirec_dagster.ranking.signals import Signals
from unirec_dagster.training.fit import CutoffData, train_variant

GRAPH, TEXT, INITIAL, SETTINGS = "graph.safetensors", "text.safetensors", "initial.safetensors", "job.json"
DATA, HOLDOUT = "data.safetensors", "holdout.safetensors"
TRAINED, HISTORY = "trained.safetensors", "result.json"
PRETRAIN, FINETUNE = "pretrain", "finetune"

Run = Callable[[list[str]], object]  # runs the torchrun command: a subprocess, or a Dagster Pipes client


def _save_dataclass_tensors(value, path: Path) -> None:
    save_file({f.name: getattr(value, f.name).contiguous() for f in dataclasses.fields(value)
               if isinstance(getattr(value, f.name), torch.Tensor)}, str(path))


def write_job(folder: Path, kind: str, graph: KnowledgeGraph, text: TextView | None, settings: dict,
              initial_state: dict[str, torch.Tensor] | None, data: TrainingData | None = None,
              holdout: HoldoutPairs | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_graph_file(graph, folder / GRAPH)
    if text is not None:
        save_file({"ids": text.ids.contiguous(), "vectors": text.vectors.contiguous()}, str(folder / TEXT))
    if initial_state is not None:
        save_file({k: v.contiguous() for k, v in initial_state.items()}, str(folder / INITIAL))
    if data is not None:
        _save_dataclass_tensors(data, folder / DATA)
        settings = {**settings, "cutoff": data.cutoff.isoformat()}
    if holdout is not None:
        _save_dataclass_tensors(holdout, folder / HOLDOUT)
    (folder / SETTINGS).write_text(json.dumps({"kind": kind, **settings}))
    return folder


@dataclass
class WorkerResult:
    state: dict[str, torch.Tensor]
    history: list[dict]
    seconds: float
    examples_per_second: float
    device: str
    world_size: int
    best_epoch: int


def torchrun_command(job: Path, world_size: int) -> list[str]:
    """The command that starts `world_size` workers on this machine for the job folder."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
            "-m", "unirec_dagster.training.distributed", "--job", str(job)]


def read_result(folder: Path) -> WorkerResult:
    if not (folder / HISTORY).exists():
        raise RuntimeError(f"the distributed workers wrote no result into {folder}: see their logs above")
    about = json.loads((folder / HISTORY).read_text())
    return WorkerResult(load_file(str(folder / TRAINED)), about["history"], about["seconds"],
                        about["examples_per_second"], about["device"], about["world_size"], about["best_epoch"])


def _launch(write: Callable[[Path], Path], graph: KnowledgeGraph, text: TextView | None, encoder: EncoderConfig,
            seed: int, world_size: int, log: Log | None, run: Run) -> TrainResult:
    """Write a job, `run` its torchrun command, and return the workers' training as the in-process
    path returns it."""
    with tempfile.TemporaryDirectory(prefix="unirec-training-") as folder:
        job = write(Path(folder))
        command = torchrun_command(job, world_size)
        if log:
            log(f"launching {world_size} workers: {' '.join(command)}")
        run(command)
        result = read_result(job)
    model = build_model(graph, text, encoder, seed)
    model.load_state_dict(result.state)
    return TrainResult(model.eval(), result.history, result.seconds, result.examples_per_second, result.device,
                       result.best_epoch, result.world_size)


def pretrain_in_workers(graph: KnowledgeGraph, text: TextView | None, config: PretrainConfig,
                        positive_relation: str | None, initial_state: dict[str, torch.Tensor] | None,
                        log: Log | None = None, *, run: Run) -> TrainResult:
    """`pretrain` in `config.world_size` workers (its signature, plus how to run them)."""
    settings = {"config": config.model_dump(), "positive_relation": positive_relation}
    return _launch(lambda folder: write_job(folder, PRETRAIN, graph, text, settings, initial_state),
                   graph, text, config.encoder, config.seed, config.world_size, log, run)


def finetune_in_workers(split: CutoffData, text: TextView | None, config: FinetuneConfig,
                        initial_state: dict[str, torch.Tensor] | None, holdout: HoldoutPairs | None = None,
                        epochs: int | None = None, log: Log | None = None, *, run: Run) -> TrainResult:
    """`train_variant` in `config.world_size` workers (its signature, plus how to run them)."""
    settings = {"config": config.model_dump(), "epochs": epochs}
    return _launch(lambda folder: write_job(folder, FINETUNE, split.graph, text, settings, initial_state,
                                            split.data, holdout),
                   split.graph, text, config.encoder, config.seed, config.world_size, log, run)


def _train(job: Path, settings: dict, graph: KnowledgeGraph, text: TextView | None,
           initial: dict[str, torch.Tensor] | None, log: Log | None) -> TrainResult:
    """The job's training, in this worker."""
    if settings["kind"] == PRETRAIN:
        return pretrain(graph, text, PretrainConfig(**settings["config"]), settings["positive_relation"], initial, log)
    config = FinetuneConfig(**settings["config"])
    data = TrainingData(dt.date.fromisoformat(settings["cutoff"]), **load_file(str(job / DATA)))
    holdout = HoldoutPairs(**load_file(str(job / HOLDOUT))) if (job / HOLDOUT).exists() else None
    return train_variant(CutoffData(data, Signals(data), graph), text, config, initial, holdout,
                         settings["epochs"], log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, required=True)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if cuda:  # each worker on its own GPU before NCCL starts (else every rank's communicator uses GPU 0)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    settings = json.loads((args.job / SETTINGS).read_text())
    if cuda and settings["config"].get("device", "auto") in ("auto", "cuda"):  # one GPU per worker
        settings["config"]["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    graph = load_graph_file(args.job / GRAPH)
    text = None
    if (args.job / TEXT).exists():
        vectors = load_file(str(args.job / TEXT))
        text = TextView(vectors["ids"], vectors["vectors"])
    initial = load_file(str(args.job / INITIAL)) if (args.job / INITIAL).exists() else None
    pipes: contextlib.AbstractContextManager = contextlib.nullcontext()
    if rank == 0 and PipesEnvVarParamsLoader().is_dagster_pipes_process():  # launched by Dagster, not by hand
        pipes = open_dagster_pipes()  # rank 0 speaks for the workers
    with pipes as context:
        log = (context.log.info if context is not None else print) if rank == 0 else None
        if log:
            log(f"distributed {settings['kind']}: {world_size} workers ({dist.get_backend()})")
        result = _train(args.job, settings, graph, text, initial, log)
        if rank == 0:
            save_file({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()},
                      str(args.job / TRAINED))
            summary = {"history": result.history, "seconds": result.seconds,
                       "examples_per_second": result.examples_per_second, "device": result.device,
                       "world_size": world_size, "best_epoch": result.best_epoch}
            (args.job / HISTORY).write_text(json.dumps(summary))
            if context is not None:
                context.report_custom_message({"kind": settings["kind"], "world_size": world_size,
                                               "seconds": result.seconds,
                                               "examples_per_second": result.examples_per_second})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
