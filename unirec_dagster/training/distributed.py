"""Data-parallel pretraining with torch.distributed: the worker side.

The pretrained_encoder asset (world_size > 1) writes a job folder with `write_job`: the KG
snapshot and the text view as safetensors, the initial weights, the settings as JSON. It then
starts `world_size` workers through Dagster Pipes:

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m unirec_dagster.model.distributed --job DIR

Each worker joins the process group (gloo on CPU, NCCL on CUDA, one GPU per worker), runs the one
training loop under DistributedDataParallel on its shard of every batch, and rank 0 writes the
trained weights and the loss history back into the folder (`read_result`) and reports its progress
and a summary to Dagster through Pipes. The same module runs unchanged under PipesK8sClient or any
other Pipes client on a cluster, given the job folder on shared storage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
from safetensors.torch import load_file, save_file

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.graph.loader import load_graph_file, save_graph_file
from unirec_dagster.model.config import PretrainConfig
from unirec_dagster.model.encoder import TextView
from unirec_dagster.model.pretrain import pretrain
from unirec_dagster.model.trainer import TrainResult, build_model

GRAPH, TEXT, INITIAL, SETTINGS = "graph.safetensors", "text.safetensors", "initial.safetensors", "job.json"
TRAINED, HISTORY = "trained.safetensors", "result.json"


def write_job(folder: Path, graph: KnowledgeGraph, text: TextView | None, config: PretrainConfig,
              positive_relation: str | None, initial_state: dict[str, torch.Tensor] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_graph_file(graph, folder / GRAPH)
    if text is not None:
        save_file({"ids": text.ids.contiguous(), "vectors": text.vectors.contiguous()}, str(folder / TEXT))
    if initial_state is not None:
        save_file({k: v.contiguous() for k, v in initial_state.items()}, str(folder / INITIAL))
    (folder / SETTINGS).write_text(json.dumps({"config": config.model_dump(), "positive_relation": positive_relation}))
    return folder


@dataclass
class WorkerResult:
    state: dict[str, torch.Tensor]
    history: list[dict]
    seconds: float
    examples_per_second: float
    device: str
    world_size: int


def torchrun_command(job: Path, world_size: int) -> list[str]:
    """The command that starts `world_size` workers on this machine for the job folder."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
            "-m", "unirec_dagster.model.distributed", "--job", str(job)]


def read_result(folder: Path) -> WorkerResult:
    if not (folder / HISTORY).exists():
        raise RuntimeError(f"the distributed workers wrote no result into {folder}: see their logs above")
    about = json.loads((folder / HISTORY).read_text())
    return WorkerResult(load_file(str(folder / TRAINED)), about["history"], about["seconds"],
                        about["examples_per_second"], about["device"], about["world_size"])


def as_train_result(result: WorkerResult, graph: KnowledgeGraph, text: TextView | None,
                    config: PretrainConfig) -> TrainResult:
    """The workers' training as the in-process path returns it."""
    model = build_model(graph, text, config.encoder, config.seed)
    model.load_state_dict(result.state)
    return TrainResult(model.eval(), result.history, result.seconds, result.examples_per_second, result.device)


def train_in_workers(graph: KnowledgeGraph, text: TextView | None, config: PretrainConfig,
                     positive_relation: str | None, initial_state: dict[str, torch.Tensor] | None,
                     log: Callable[[str], None] | None = None, *, run: Callable[[list[str]], object]) -> TrainResult:
    """Pretrain in `config.world_size` workers (`pretrain`'s signature, plus how to run them): write
    the job, `run` the torchrun command (a subprocess, or a Dagster Pipes client), read the result."""
    with tempfile.TemporaryDirectory(prefix="unirec-pretraining-") as folder:
        job = write_job(Path(folder), graph, text, config, positive_relation, initial_state)
        command = torchrun_command(job, config.world_size)
        if log:
            log(f"launching {config.world_size} workers: {' '.join(command)}")
        run(command)
        return as_train_result(read_result(job), graph, text, config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, required=True)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    job = json.loads((args.job / SETTINGS).read_text())
    config = PretrainConfig(**job["config"])
    if cuda and config.device in ("auto", "cuda"):
        config = config.model_copy(update={"device": f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"})
    graph = load_graph_file(args.job / GRAPH)
    text = None
    if (args.job / TEXT).exists():
        vectors = load_file(str(args.job / TEXT))
        text = TextView(vectors["ids"], vectors["vectors"])
    initial = load_file(str(args.job / INITIAL)) if (args.job / INITIAL).exists() else None
    pipes = contextlib.nullcontext()
    if rank == 0 and PipesEnvVarParamsLoader().is_dagster_pipes_process():  # launched by Dagster, not by hand
        pipes = open_dagster_pipes()  # rank 0 speaks for the workers
    with pipes as context:
        log = (context.log.info if context is not None else print) if rank == 0 else None
        if log:
            log(f"distributed pretraining: {world_size} workers ({dist.get_backend()})")
        result = pretrain(graph, text, config, job["positive_relation"], initial, log)
        if rank == 0:
            save_file({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()},
                      str(args.job / TRAINED))
            summary = {"history": result.history, "seconds": result.seconds,
                       "examples_per_second": result.examples_per_second, "device": result.device,
                       "world_size": world_size}
            (args.job / HISTORY).write_text(json.dumps(summary))
            if context is not None:
                context.report_custom_message({"world_size": world_size, "seconds": result.seconds,
                                               "edges_per_second": result.examples_per_second})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
