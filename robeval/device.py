"""Which torch device a run uses: `auto` picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from robeval.errors import RobevalError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobevalError("--device cuda was asked for but no GPU is visible: use --device cpu")
    return torch.device(name)
