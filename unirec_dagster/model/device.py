"""Device choice: CUDA when there is one, CPU otherwise, unless named (the compute resource or the
run config name it; UNIREC_DEVICE reaches the code only through the resource)."""

from __future__ import annotations

import torch


def choose_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    return device
