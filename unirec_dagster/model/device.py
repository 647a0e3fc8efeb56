"""Device choice: CUDA when there is one, CPU otherwise; UNIREC_DEVICE or config overrides."""

from __future__ import annotations

import torch

from unirec_dagster import settings


def choose_device(name: str = "auto") -> torch.device:
    name = settings.device_name() if name == "auto" else name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    return device
