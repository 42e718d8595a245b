"""Write a benchmark's figures into its own section of BENCHMARKS.md (replaced on rerun)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def device_label(device: torch.device) -> str:
    """A short description of the hardware the figures were measured on."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    cores = len(os.sched_getaffinity(0))
    return f"CPU {platform.processor() or platform.machine()}, {cores} cores"


def write_section(name: str, device: torch.device, body: str,
                  path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace (or append) the section `name` for this device kind in BENCHMARKS.md."""
    key = f"{name} {device.type}"
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    header = "# Benchmarks\n\nFigures written by the scripts in `benchmarks/`.\n"
    text = path.read_text() if path.is_file() else header
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = f"{text.rstrip()}\n\n{section}\n"
    path.write_text(text)
