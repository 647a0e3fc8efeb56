"""What the benchmarks share: running one measured case in a fresh process, its peak memory, and
loading a whole finished dataset into a warehouse.

A case runs in its own process so that its peak RSS is its own: the script is started again with
the given arguments and prints its result as one JSON line last.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def peak_rss_gib() -> float:
    """Peak RSS of this process image (Linux VmHWM). Not ru_maxrss: on Linux that survives exec,
    so a child started by a large parent would report the parent's peak (the KG bench first
    measured 9.5 GiB that way, while the build itself peaked at 3.3 GiB)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 / 1024  # kB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def in_fresh_process(script: str, *args: str) -> dict | None:
    """Run `script` with `args` in a new Python process; its last stdout line parsed as JSON, or
    None when it failed (its stderr, progress and errors, goes straight to ours)."""
    out = subprocess.run([sys.executable, script, *args], stdout=subprocess.PIPE, text=True)
    if out.returncode:
        print(f"{Path(script).name} {' '.join(args)}: failed with exit {out.returncode}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_whole_dataset(conn, spec) -> None:
    """Every day of a finished dataset, its catalogs and its text view (skipped when the warehouse
    already holds events)."""
    import datetime as dt

    from unirec_dagster.features import refresh_text_embeddings
    from unirec_dagster.ingest import build_catalog, ingest_days
    from unirec_dagster.model.text_encoder import TextEncoder
    from unirec_dagster.warehouse import rows

    if not rows(conn, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'events'")[0][0]:
        days = [spec.events.start_date + dt.timedelta(days=i)
                for i in range((spec.events.end_date - spec.events.start_date).days + 1)]
        ingest_days(conn, spec, days)
        build_catalog(conn, spec, "items")
        build_catalog(conn, spec, "users")
    refresh_text_embeddings(conn, TextEncoder())
