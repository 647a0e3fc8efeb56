"""Checkpoints: safetensors weights plus a JSON manifest, written atomically; never pickle.

Layout: <store>/<kind>/<version>/{model.safetensors, manifest.json, manifest.sha256}, where the
version is `<kind>-<partition>-<created>`. A checkpoint is written to a temporary folder beside
its final place and renamed into it, so a reader sees a whole checkpoint or none. The manifest
holds the weights' SHA-256 and manifest.sha256 holds the manifest's, so a truncated or edited
file of either kind is refused loudly; a store never falls back to an older checkpoint because
the newest one is damaged.

Each (kind, partition) keeps one checkpoint: a re-run of a partition replaces its earlier
attempt, and a step that needs "the previous" checkpoint takes the newest of an earlier
partition, never its own partition's previous attempt, so re-runs are reproducible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unirec_dagster.model.config import EncoderConfig
from unirec_dagster.model.encoder import GraphEncoder

WEIGHTS, MANIFEST, MANIFEST_SUM = "model.safetensors", "manifest.json", "manifest.sha256"
# The kinds of checkpoint the pipeline writes: the weekly pretrained encoder, the nightly served
# model, and the two ablations fine-tuning trains beside it for the evaluation.
PRETRAINED, FINETUNED = "pretrained", "finetuned"
MF_ABLATION, FROM_SCRATCH = "mf-ablation", "from-scratch"
FORMAT = 2


class CheckpointError(ValueError):
    pass


@dataclass
class Checkpoint:
    path: Path
    manifest: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def partition(self) -> dt.date:
        return dt.date.fromisoformat(self.manifest["partition"])

    @property
    def snapshot_date(self) -> dt.date:
        return dt.date.fromisoformat(self.manifest["kg_snapshot"])

    def non_finite(self) -> list[str]:
        """Names of the weight tensors holding a NaN or an infinity (none in a healthy checkpoint)."""
        return [name for name, tensor in self.state.items()
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]

    def read_text(self, name: str) -> str:
        """A text file saved beside the weights (`CheckpointStore.save(files=...)`), verified against
        the SHA-256 the manifest recorded for it."""
        expected = self.manifest.get("files", {}).get(name)
        if expected is None:
            raise CheckpointError(f"{self.path}: the manifest lists no file {name!r}")
        path = self.path / name
        if not path.exists() or _sha256(path) != expected:
            raise CheckpointError(f"{path}: missing or its SHA-256 differs from the manifest; the checkpoint is "
                                  "corrupted or was changed after it was written. Delete the folder and re-run the step.")
        return path.read_text()

    def build_model(self, num_entities: int | None = None, num_relations: int | None = None) -> GraphEncoder:
        """The model, grown to `num_entities`/`num_relations` when the KG has gained rows since."""
        m = self.manifest
        model = GraphEncoder(max(num_entities or 0, m["num_entities"]), max(num_relations or 0, m["num_relations"]),
                             EncoderConfig(**m["encoder"]), m["text_dim"])
        skipped = model.warm_start(self.state)
        if skipped:
            raise CheckpointError(f"{self.path}: tensors {skipped} do not fit the model the manifest describes")
        return model.eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint folder `path`, verified against manifest.sha256."""
    path = Path(path)
    try:
        text = (path / MANIFEST).read_bytes()
        expected = (path / MANIFEST_SUM).read_text().strip()
    except FileNotFoundError as missing:
        raise CheckpointError(f"{path}: {Path(missing.filename).name} is missing; the checkpoint is incomplete or "
                              "damaged. Delete the folder (or restore it) and re-run the step that wrote it.") from None
    if hashlib.sha256(text).hexdigest() != expected:
        raise CheckpointError(f"{path / MANIFEST}: its SHA-256 differs from {MANIFEST_SUM}; the manifest was "
                              "truncated or edited after it was written. Delete the folder and re-run the step.")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path / MANIFEST}: not valid JSON ({error}); the checkpoint is corrupted") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format')!r}, this code reads {FORMAT}; "
                              "retrain, or delete the old models folder")
    return manifest


def load_checkpoint(path: Path) -> Checkpoint:
    """A verified checkpoint: manifest and weights both checked against their SHA-256."""
    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if not weights.exists() or _sha256(weights) != manifest.get("weights_sha256"):
        raise CheckpointError(f"{weights}: missing or its SHA-256 differs from the manifest; the checkpoint is "
                              "corrupted or was changed after it was written. Delete the folder and re-run the step.")
    return Checkpoint(path, manifest, load_file(weights))


STALE_STAGING_SECONDS = 600


class CheckpointStore:
    """Checkpoints of one warehouse (and dataset), by kind and partition."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def save(self, kind: str, partition: dt.date, model: GraphEncoder, snapshot_date: dt.date,
             relation_names: list[str], entity_fingerprint: str, files: dict[str, str] | None = None,
             **manifest: Any) -> Checkpoint:
        """Write a checkpoint of `kind` ("pretrained", "finetuned", ...) for `partition`, replacing
        that partition's earlier attempt once the new one is in place. `files`: text files (name ->
        content) kept beside the weights, each with its SHA-256 in the manifest (the ranker)."""
        created = dt.datetime.now(dt.UTC)
        version = f"{kind}-{partition.isoformat()}-{created.strftime('%Y%m%dT%H%M%S%f')}"
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        earlier = self._folders(kind, partition, partition)
        self._remove_stale_staging(parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=parent))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        try:
            save_file(state, staging / WEIGHTS)
            for name, content in (files or {}).items():
                if "/" in name or name in (WEIGHTS, MANIFEST, MANIFEST_SUM) or name.startswith("."):
                    raise ValueError(f"a checkpoint file may not be called {name!r}")
                (staging / name).write_text(content)
            full = {
                "format": FORMAT, "kind": kind, "version": version, "created_at": created.isoformat(),
                "partition": partition.isoformat(), "kg_snapshot": snapshot_date.isoformat(),
                "num_entities": model.num_entities, "num_relations": len(relation_names),
                "relation_names": relation_names, "text_dim": model.text_dim, "encoder": model.config.model_dump(),
                "entity_fingerprint": entity_fingerprint, "parameters": sum(p.numel() for p in model.parameters()),
                "weights_sha256": _sha256(staging / WEIGHTS),
                "files": {name: _sha256(staging / name) for name in files or {}}, **manifest,
            }
            text = json.dumps(full, indent=2, default=str).encode()
            (staging / MANIFEST).write_bytes(text)
            (staging / MANIFEST_SUM).write_text(hashlib.sha256(text).hexdigest() + "\n")
            final = parent / version
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for path in earlier:
            shutil.rmtree(path, ignore_errors=True)
        return Checkpoint(final, json.loads(text), state)

    @staticmethod
    def _remove_stale_staging(parent: Path) -> None:
        """Staging folders (`.<version>.*`) a killed save left behind: a save takes seconds, and only
        one writer runs at a time (the warehouse pool), so one untouched for STALE_STAGING_SECONDS is
        nobody's."""
        now = time.time()
        for child in parent.glob(".*"):
            if child.is_dir() and now - child.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(child, ignore_errors=True)

    def _folders(self, kind: str, first: dt.date | None = None, last: dt.date | None = None) -> list[Path]:
        """Checkpoint folders of `kind` with a partition in [first, last], oldest first, from their
        names (`<kind>-<partition>-<created>`) alone: no manifest is read, so a damaged checkpoint
        of another partition is never in the way."""
        folder = self.root / kind
        found = []
        for child in folder.iterdir() if folder.exists() else []:
            stamp = child.name[len(kind) + 1:]
            if not child.name.startswith(f"{kind}-") or len(stamp) < 11:
                continue
            try:
                partition = dt.date.fromisoformat(stamp[:10])
            except ValueError:
                continue
            if (first is None or partition >= first) and (last is None or partition <= last):
                found.append((stamp, child))
        return [path for _, path in sorted(found)]

    def manifests(self, kind: str) -> list[dict[str, Any]]:
        """Verified manifests of `kind` (each with its "path"), by partition, then creation time.
        A damaged checkpoint raises CheckpointError instead of being skipped."""
        return [{**read_manifest(path), "path": str(path)} for path in self._folders(kind)]

    def latest(self, kind: str, partition_on_or_before: dt.date | None = None, *,
               partition_before: dt.date | None = None, partition_from: dt.date | None = None,
               where: Any = None) -> Checkpoint | None:
        """The checkpoint of `kind` of the newest partition in the given bounds (and meeting `where`,
        a manifest -> bool), or None. Checkpoints are read newest first: a damaged one in the way
        raises CheckpointError (nothing silently falls back past it), older ones are never read."""
        last = partition_on_or_before
        if partition_before is not None:
            day_before = partition_before - dt.timedelta(days=1)
            last = day_before if last is None else min(last, day_before)
        for path in reversed(self._folders(kind, partition_from, last)):
            manifest = read_manifest(path)
            if where is None or where(manifest):
                return load_checkpoint(path)
        return None

    def of_partition(self, kind: str, partition: dt.date) -> Checkpoint:
        found = self.latest(kind, partition, partition_from=partition)
        if found is None:
            raise LookupError(f"no {kind} checkpoint for partition {partition} in {self.root}: "
                              f"materialize that partition of the {kind} model first")
        return found




def check_compatible(checkpoint: Checkpoint, fingerprint_of: Any) -> None:
    """Refuse a checkpoint whose rows are not this warehouse's entities. `fingerprint_of(n)` gives
    the fingerprint of the warehouse's first n entities."""
    n = checkpoint.manifest["num_entities"]
    if fingerprint_of(n) != checkpoint.manifest["entity_fingerprint"]:
        raise CheckpointError(f"{checkpoint.path}: its {n:,} entity rows are not this warehouse's entities "
                              "(another dataset or a rebuilt kg.entities); train from scratch or point "
                              "UNIREC_MODELS_DIR elsewhere")
