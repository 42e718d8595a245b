"""What a model is: a loaded model with what is known about it, and the identity its results are
stored under.

A stored run belongs to exactly one model. A checkpoint file is identified by its sha256; an
in-memory module by its class, every parameter and buffer, and what it computes on a fixed probe
batch (`probe_fingerprint`), so two modules that differ only in a plain attribute (a threshold or
temperature kept as a float) never share a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robeval.attacks.guard import model_dtype
from robeval.errors import RobevalError


@dataclass
class ModelSource:
    """A loaded model and what is known about it."""

    model: nn.Module              # eval mode, on the device, inputs in [0,1]
    name: str                     # display name: run folder, file name or robustbench:Name
    kind: str                     # robeval | state_dict | robustbench
    checkpoint_hash: str | None   # sha256 of the checkpoint file
    num_classes: int
    dataset: str | None = None    # what the model was trained on, when known
    eps: float | None = None      # training or benchmark threat model, when known
    norm: str | None = None       # linf | l2, when known
    config: dict[str, Any] = field(default_factory=dict)  # provenance
    path: str | None = None       # the checkpoint file, when the model came from one
    probe_fingerprint: str | None = None  # what an in-memory module computes (`probe_fingerprint`)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def module_fingerprint(model: nn.Module) -> str:
    """sha256 of a module's class (qualified name) and every parameter and buffer it holds.

    Names, dtypes, shapes and values all count. This does not identify the function a module
    computes: plain attributes (a temperature or threshold kept as a float), hooks and code are
    not in it, which is what `probe_fingerprint` adds.
    """
    kind = type(model)
    digest = hashlib.sha256(f"{kind.__module__}.{kind.__qualname__}".encode())
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"|{name}|{value.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


PROBE_IMAGES = 8           # images in the behavioural probe
PROBE_SEED = 0x5EED_2024   # seeds the probe images and the global RNG during the probe's forward
# The probe's outputs are hashed on a grid of 2**-PROBE_BITS times the largest finite |output|
# (the power of two at or below it): 2**(23 - PROBE_BITS) = 2048 float32 ulps of that largest
# value. Float noise between CPU kernels (another summation order or thread count) is a few
# ulps, so it almost never moves a value across a grid line; when it does, the identity changes
# and the run starts afresh, never resuming another model's run. A real change of the function
# (a temperature, a threshold, a noise level) moves outputs by far more than 1/4096 of their
# scale. The grid is relative to the outputs' scale so that logits of 1e-3 or 1e3 are hashed
# with the same relative precision.
PROBE_BITS = 12


def probe_fingerprint(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> str:
    """sha256 of what `model` computes on a fixed probe: `PROBE_IMAGES` images of `shape` (C,H,W).

    The probe is uniform noise in [0,1) from a generator seeded with `PROBE_SEED`, made on the
    CPU and moved to the model's device, in `dtype` (default: the model's own floating dtype).
    The forward runs in eval mode under `torch.no_grad`,
    with the global RNG forked and seeded, so dropout is off and a model that draws random
    numbers in forward (torch.randn) gives the same fingerprint on every call; the training
    flags and the RNG states are put back afterwards. The output's dtype, shape and values
    (rounded, see `PROBE_BITS`) are hashed; NaN and ±inf are hashed as such, so a model with
    non-finite outputs still gets a fingerprint. Failures are a one-line `RobevalError`.
    """
    device = _module_device(model)
    generator = torch.Generator().manual_seed(PROBE_SEED)
    dtype = dtype or model_dtype(model)
    probe = torch.rand(PROBE_IMAGES, *shape, generator=generator).to(device=device, dtype=dtype)
    training = [(module, module.training) for module in model.modules()]
    try:
        with _seeded_rng(device), torch.no_grad():
            model.eval()
            outputs = model(probe)
    except Exception as err:
        kind = type(model)
        raise RobevalError(f"{kind.__module__}.{kind.__qualname__} failed on a {tuple(probe.shape)} "
                           f"batch of images ({type(err).__name__}: {err}): it must take N×C×H×W "
                           "images in [0,1]") from err
    finally:
        for module, flag in training:
            module.training = flag
    if not isinstance(outputs, torch.Tensor):
        raise RobevalError(f"{type(model).__qualname__} returned {type(outputs).__name__}: it must "
                           "return logits of shape (N, classes)")
    return outputs_hash(outputs)


def outputs_hash(outputs: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and values on the `PROBE_BITS` grid, NaN/±inf included."""
    values = outputs.detach().cpu().double().reshape(-1)
    finite = torch.isfinite(values)
    # 0 finite, 1 NaN, 2 +inf, 3 -inf: the non-finite values are hashed by kind, then zeroed
    kinds = torch.where(finite, 0, torch.where(torch.isnan(values), 1, torch.where(values > 0, 2, 3)))
    values = torch.where(finite, values, 0.0)
    largest = float(values.abs().max()) if values.numel() else 0.0
    exponent = math.frexp(largest)[1] - 1 if largest > 0 else 0   # 2**exponent <= largest
    grid = torch.round(values * math.ldexp(1.0, PROBE_BITS - exponent)).to(torch.int64)  # exact scaling
    digest = hashlib.sha256(f"{outputs.dtype}|{tuple(outputs.shape)}|{exponent}|".encode())
    digest.update(kinds.to(torch.uint8).numpy().tobytes())
    digest.update(grid.numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _seeded_rng(device: torch.device) -> Iterator[None]:
    """The global CPU RNG (and the model's CUDA device's) forked and seeded with `PROBE_SEED`."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[] if index is None else [index], device_type="cuda"):
        torch.random.default_generator.manual_seed(PROBE_SEED)
        if index is not None:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(PROBE_SEED)
        yield


def _module_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a stateless module)."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return torch.device("cpu") if tensor is None else tensor.device


def source_identity(source: ModelSource) -> str:
    """What a stored run of `source` is keyed by (never its display name, which two different
    models may share): its checkpoint's sha256, else `module:<module_fingerprint>`, followed by
    `:outputs:<probe_fingerprint>` when the source records what the module computes (the Python
    API always does; a hand-built `ModelSource` should set `probe_fingerprint` too)."""
    if source.checkpoint_hash:
        return source.checkpoint_hash
    identity = f"module:{module_fingerprint(source.model)}"
    if source.probe_fingerprint:
        identity += f":outputs:{source.probe_fingerprint}"
    return identity
