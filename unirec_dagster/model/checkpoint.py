"""Checkpoints: safetensors weights plus a JSON manifest, written atomically; never pickle.

Layout: <models dir>/<kind>/<version>/{model.safetensors, manifest.json}. A checkpoint is
written to a temporary folder beside its final place and renamed into it, so a reader sees a
whole checkpoint or none. Loading checks the weights' SHA-256 against the manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unirec_dagster.model.config import EncoderConfig
from unirec_dagster.model.encoder import GraphEncoder

WEIGHTS, MANIFEST = "model.safetensors", "manifest.json"
FORMAT = 1


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
    def snapshot_date(self) -> dt.date:
        return dt.date.fromisoformat(self.manifest["kg_snapshot"])

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


def save_checkpoint(root: Path, kind: str, model: GraphEncoder, snapshot_date: dt.date, relation_names: list[str],
                    entity_fingerprint: str, **manifest: Any) -> Path:
    """Write a checkpoint of `kind` ("pretrained", "finetuned", ...); returns its folder."""
    created = dt.datetime.now(dt.timezone.utc)
    version = f"{kind}-{snapshot_date.isoformat()}-{created.strftime('%Y%m%dT%H%M%S%f')}"
    parent = Path(root) / kind
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, staging / WEIGHTS)
        full = {
            "format": FORMAT, "kind": kind, "version": version, "created_at": created.isoformat(),
            "kg_snapshot": snapshot_date.isoformat(), "num_entities": model.num_entities,
            "num_relations": len(relation_names), "relation_names": relation_names, "text_dim": model.text_dim,
            "encoder": model.config.model_dump(), "entity_fingerprint": entity_fingerprint,
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_sha256": _sha256(staging / WEIGHTS), **manifest,
        }
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
        final = parent / version
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST}; not a checkpoint folder") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path / MANIFEST}: not valid JSON ({error}); the checkpoint is corrupted") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format')!r}, this code reads {FORMAT}")
    weights = path / WEIGHTS
    if not weights.exists() or _sha256(weights) != manifest.get("weights_sha256"):
        raise CheckpointError(f"{weights}: missing or its SHA-256 differs from the manifest; the checkpoint is "
                              "corrupted or was changed after it was written. Retrain or pick another version.")
    return Checkpoint(path, manifest, load_file(weights))


def list_checkpoints(root: Path, kind: str) -> list[dict[str, Any]]:
    """Manifests of the complete checkpoints of `kind`, oldest first."""
    folder = Path(root) / kind
    manifests = []
    for child in sorted(folder.glob(f"{kind}-*")) if folder.exists() else []:
        try:
            manifests.append({**json.loads((child / MANIFEST).read_text()), "path": str(child)})
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(manifests, key=lambda m: m["created_at"])


def latest_checkpoint(root: Path, kind: str, snapshot_on_or_before: dt.date | None = None) -> Checkpoint | None:
    """The newest checkpoint of `kind` whose KG snapshot is not after the given day."""
    usable = [m for m in list_checkpoints(root, kind)
              if snapshot_on_or_before is None or dt.date.fromisoformat(m["kg_snapshot"]) <= snapshot_on_or_before]
    return load_checkpoint(Path(usable[-1]["path"])) if usable else None


def check_compatible(checkpoint: Checkpoint, fingerprint_of: Any) -> None:
    """Refuse a checkpoint whose rows are not this warehouse's entities. `fingerprint_of(n)` gives
    the fingerprint of the warehouse's first n entities."""
    n = checkpoint.manifest["num_entities"]
    if fingerprint_of(n) != checkpoint.manifest["entity_fingerprint"]:
        raise CheckpointError(f"{checkpoint.path}: its {n:,} entity rows are not this warehouse's entities "
                              "(another dataset or a rebuilt kg.entities); train from scratch or point "
                              "UNIREC_MODELS_DIR elsewhere")
