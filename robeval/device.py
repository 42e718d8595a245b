"""Which torch device a run uses: `auto` picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from robeval.errors import RobevalError


def check_device(name: str) -> torch.device:
    """A device name this suite runs on (cpu, cuda, cuda:N), else a one-line error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise RobevalError(f"unknown device {name!r}: use --device auto, cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise RobevalError(f"device {name!r} is not supported: use --device auto, cpu, cuda or cuda:N")
    return device


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = check_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobevalError("--device cuda was asked for but no GPU is visible: use --device cpu")
    return device
