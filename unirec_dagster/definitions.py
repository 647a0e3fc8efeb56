"""The code location: every Dagster object found under unirec_dagster/defs/.

With UNIREC_EXECUTOR=k8s_job (deploy/), each step runs in its own Kubernetes pod sized by its op
tags (the training steps ask for a GPU); otherwise Dagster's default executor runs the steps here.
"""

import os
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    found = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    if os.environ.get("UNIREC_EXECUTOR") == "k8s_job":
        from dagster_k8s import k8s_job_executor  # installed in the deploy image only

        return dg.Definitions.merge(found, dg.Definitions(executor=k8s_job_executor))
    return found
