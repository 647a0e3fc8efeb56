"""A night's users ranked in worker processes: the users split into shards, each ranked by a forked
copy of the serving process.

Forking shares the policy (the night's signals, the graph model's vectors, the compiled trees) with
every shard copy-on-write: nothing is pickled or loaded again, and no shard opens the warehouse,
which its one writer holds. Each shard writes its lists to a safetensors file and exits; the parent
reads them back in shard order, so the rows are those of one process. A shard that fails or is
killed fails the whole ranking before anything is written: the night stays as it was, and a re-run
gives the same rows.

Each shard runs on one thread. OpenMP, which torch's own threads use, cannot start again in a
process forked after it ran (a child asking for two threads hangs), so shards scale by processes:
as many shards as cores. One shard (the default) ranks in this process with all its threads.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

COLUMNS = ("scores", "items", "reasons", "anchors", "values")
PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass
class ScoredUsers:
    """A top-K per user, each tensor (users, k): scores, candidate positions, and the reason as a
    template id of `templates` with its anchor (candidate position, -1 for none) and shared value
    (entity id, -1 for none)."""

    scores: torch.Tensor
    items: torch.Tensor
    reasons: torch.Tensor
    anchors: torch.Tensor
    values: torch.Tensor
    templates: list[str]


class ShardFailed(RuntimeError):
    """A shard's process failed or was killed; nothing of the night was written."""


def rank_in_shards(rank: Callable[[torch.Tensor], ScoredUsers], users: torch.Tensor, shards: int) -> ScoredUsers:
    """`rank(users)`, computed by `shards` forked processes over consecutive slices of `users` and
    joined in order; with one shard (or fewer users than shards), in this process."""
    if shards <= 1 or len(users) < shards:
        return rank(users)
    if torch.cuda.is_initialized():
        raise ValueError(f"shards={shards}: this process has used CUDA, which a forked process cannot use; "
                         "rank with shards=1 on a GPU (it is one device already)")
    with tempfile.TemporaryDirectory(prefix="unirec-shards-") as folder:
        outputs = [Path(folder) / f"shard-{i}" for i in range(shards)]
        children = {}
        for part, output in zip(torch.tensor_split(users, shards), outputs):
            pid = os.fork()
            if pid == 0:  # the shard: rank, write, and leave without running the parent's exit handlers
                _rank_shard(rank, part, output)
            children[pid] = output
        problems = [problem for problem in (_wait(pid, output) for pid, output in children.items()) if problem]
        if problems:
            raise ShardFailed(f"{len(problems)} of {shards} shards failed, nothing written: " + "; ".join(problems))
        return _joined([_read(output) for output in outputs])


def _rank_shard(rank: Callable[[torch.Tensor], ScoredUsers], users: torch.Tensor, output: Path) -> None:
    code = 1
    try:
        _die_with_parent()
        torch.set_num_threads(1)
        top = rank(users)
        save_file({name: getattr(top, name).contiguous() for name in COLUMNS}, f"{output}.part")
        Path(f"{output}.json").write_text(json.dumps(top.templates))
        os.replace(f"{output}.part", f"{output}.safetensors")
        code = 0
    except BaseException:  # noqa: BLE001 - whatever it was, the parent reports it
        Path(f"{output}.error").write_text(traceback.format_exc())
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """Linux: a shard is killed when its step's process dies, instead of ranking on for nobody."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the shard ends when its share is ranked
        pass


def _wait(pid: int, output: Path) -> str | None:
    """None when the shard wrote its lists, else what happened to it."""
    _, status = os.waitpid(pid, 0)
    name = output.name
    if os.WIFSIGNALED(status):
        return f"{name} (process {pid}) was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    error = Path(f"{output}.error")
    if error.exists():
        return f"{name} raised: {error.read_text().strip().splitlines()[-1]}"
    if os.waitstatus_to_exitcode(status) != 0 or not Path(f"{output}.safetensors").exists():
        return f"{name} (process {pid}) exited with {os.waitstatus_to_exitcode(status)} and wrote no lists"
    return None


def _read(output: Path) -> ScoredUsers:
    columns = load_file(f"{output}.safetensors")
    return ScoredUsers(templates=json.loads(Path(f"{output}.json").read_text()), **columns)


def _joined(parts: list[ScoredUsers]) -> ScoredUsers:
    """The shards' lists in order. Each shard numbered the reason templates as it met them: the ids
    are mapped onto one list."""
    template_id: dict[str, int] = {}
    reasons = []
    for part in parts:
        ids = torch.tensor([template_id.setdefault(t, len(template_id)) for t in part.templates], dtype=torch.long)
        reasons.append(ids[part.reasons] if len(ids) else part.reasons)
    columns = {name: torch.cat([getattr(p, name) for p in parts]) for name in COLUMNS if name != "reasons"}
    return ScoredUsers(reasons=torch.cat(reasons), templates=list(template_id), **columns)
