"""Distributed training launched from the assets through Dagster Pipes: torchrun workers whose logs
and summary come back to the run (see model/distributed.py for the worker side)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import dagster as dg

from unirec_dagster.graph import KnowledgeGraph
from unirec_dagster.model.config import PretrainConfig
from unirec_dagster.model.distributed import as_train_result, read_result, torchrun_command, write_job
from unirec_dagster.model.encoder import TextView
from unirec_dagster.model.trainer import TrainResult


def torchrun_pretrainer(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient):
    """A `pretrainer` for run_pretraining that trains in `config.world_size` torchrun workers."""

    def pretrainer(graph: KnowledgeGraph, text: TextView | None, config: PretrainConfig,
                   positive_relation: str | None, initial_state, log) -> TrainResult:
        with tempfile.TemporaryDirectory(prefix="unirec-pretraining-") as folder:
            job = write_job(Path(folder), graph, text, config, positive_relation, initial_state)
            command = torchrun_command(job, config.world_size)
            context.log.info(f"launching {config.world_size} workers: {' '.join(command)}")
            client.run(command=command, context=context, extras={"world_size": config.world_size})
            return as_train_result(read_result(job), graph, text, config)

    return pretrainer
