"""Distributed training launched from the assets through Dagster Pipes: torchrun workers whose logs
and summary come back to the run (see training/distributed.py for the worker side)."""

from __future__ import annotations

import warnings
from functools import partial

import dagster as dg

from unirec_dagster.training.distributed import finetune_in_workers, pretrain_in_workers

# Dagster 1.13's own PipesContext reads the preview property `expected_writer_count` of every
# message reader, so each Pipes launch warned about an API this project does not call. Only that
# one message is silenced, around the launch (a module-level filter is replaced by the step worker's).
_OWN_PREVIEW = "Function `PipesMessageReader.expected_writer_count` is currently in preview"


def _run_workers(client: dg.PipesSubprocessClient, context: dg.AssetExecutionContext, command: list[str]):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_OWN_PREVIEW, category=dg.PreviewWarning)
        return client.run(command=command, context=context)


def torchrun_pretrainer(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient):
    """A `pretrainer` for run_pretraining that trains in `config.world_size` torchrun workers,
    started through the Pipes client."""
    return partial(pretrain_in_workers, run=partial(_run_workers, client, context))


def torchrun_finetuner(context: dg.AssetExecutionContext, client: dg.PipesSubprocessClient):
    """A `trainer` for run_finetuning that trains each variant in `config.world_size` torchrun
    workers, started through the Pipes client."""
    return partial(finetune_in_workers, run=partial(_run_workers, client, context))
