"""The code location: every Dagster object found under unirec_dagster/defs/.

With UNIREC_EXECUTOR=k8s_job (deploy/), each step runs in its own Kubernetes pod sized by its op
tags (the training steps ask for a GPU); otherwise Dagster's multiprocess executor runs the steps
here, each in a process forked from a server that imported the code once per run.

Loading it also frees the pool places of runs killed on this machine (unirec_dagster.slots), so a
`dagster asset materialize` never waits on a dead run, with or without the daemon; and a command
that fails to load it on a bad dataset spec prints the spec's message alone, not a traceback.
"""

import os
import pkgutil
import sys
from pathlib import Path

import dagster as dg

from unirec_dagster.datasets import SpecError
from unirec_dagster.slots import free_when_the_code_location_loads


def _spec_error_in(error: BaseException | None) -> SpecError | None:
    while error is not None and not isinstance(error, SpecError):
        error = error.__cause__ or error.__context__
    return error


def _report_spec_errors_as_one_message(hook=sys.excepthook):
    """An uncaught SpecError (the spec is read when the code location loads, so every CLI command
    would end in a long traceback) is printed as its own message; anything else as before. Under
    the webserver the load error is caught and shown on the code location instead."""
    def report(kind, error, traceback):
        spec_error = _spec_error_in(error)
        if spec_error is None:
            return hook(kind, error, traceback)
        print(f"error: {spec_error}", file=sys.stderr)
    return report


sys.excepthook = _report_spec_errors_as_one_message()


def _defs_modules() -> list[str]:
    from unirec_dagster import defs as package

    return [f"{package.__name__}.{module.name}" for module in pkgutil.iter_modules(package.__path__)]


# A spawned step process imports torch, LightGBM, transformers and the assets again: some 4 s of each
# of a night's seven steps (BENCHMARKS.md). Forked from a server that imported them once, a step
# starts in well under a second. The server only imports (no torch threads, no CUDA): safe to fork.
LOCAL_EXECUTOR = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": _defs_modules()}}}, name="multiprocess_forkserver")


@dg.definitions
def defs() -> dg.Definitions:
    free_when_the_code_location_loads()
    found = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    if os.environ.get("UNIREC_EXECUTOR") == "k8s_job":
        from dagster_k8s import k8s_job_executor  # installed in the deploy image only

        return dg.Definitions.merge(found, dg.Definitions(executor=k8s_job_executor))
    return dg.Definitions.merge(found, dg.Definitions(executor=LOCAL_EXECUTOR))
