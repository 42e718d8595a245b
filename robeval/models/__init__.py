"""Model registry. Every model takes inputs in [0,1]; normalisation lives inside the model.

`build_model("wrn-34-10", activation="gelu", num_classes=10, ...)` returns a `NormalizedModel`
whose `net` is the architecture and whose buffers hold the dataset mean and std.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robeval.activations import activation_factory
from robeval.errors import RobevalError
from robeval.registry import Registry, canonical

ModelBuilder = Callable[..., nn.Module]  # builder(act, num_classes, in_channels) -> nn.Module

MODELS: Registry[ModelBuilder] = Registry("model")


class NormalizedModel(nn.Module):
    """Subtracts the mean and divides by the std, then runs `net`: inputs stay in [0,1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build."""

    arch: str = "cnn-small"          # a name from MODELS, e.g. preact-resnet18, wrn-34-10
    activation: str = "relu"         # a name from ACTIVATIONS, optionally "elu(alpha=0.5)"
    smooth_grad: str = "none"        # ReLU only: none|attacker|optimizer|both (SAT Table 1)


_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")
MAX_WRN_DEPTH = 1000              # layers
MAX_WRN_PARAMETERS = 500_000_000  # refused before anything is allocated


def wrn_parameters(depth: int, width: int) -> int:
    """About how many weights WRN-depth-width has: (depth − 4)/6 blocks per group, two 3×3
    convolutions per block, 16w, 32w and 64w channels in the three groups."""
    blocks = (depth - 4) // 6
    return 2 * 9 * blocks * (16 * width) ** 2 * (1 + 4 + 16)


def resolve_arch(arch: str) -> str:
    """The registered name for `arch`; `wrn-D-W` is accepted for any depth 6n+4 and width ≥ 1."""
    wrn = _WRN.match(canonical(arch))
    if wrn:
        depth, width = int(wrn.group(1)), int(wrn.group(2))
        if depth < 10 or (depth - 4) % 6 or width < 1:
            raise RobevalError(
                f"model {arch!r}: a WRN needs depth 6n+4 with n ≥ 1 (e.g. 16, 28, 34) and "
                f"width ≥ 1, got depth {depth} and width {width}"
            )
        size = wrn_parameters(depth, width)
        if depth > MAX_WRN_DEPTH or size > MAX_WRN_PARAMETERS:
            raise RobevalError(
                f"model {arch!r} would have depth {depth} and about {size / 1e6:,.0f} million "
                f"parameters; robeval builds WRNs up to depth {MAX_WRN_DEPTH} and "
                f"{MAX_WRN_PARAMETERS / 1e6:,.0f} million parameters (WRN-70-16 has 267 million)"
            )
        return canonical(arch)
    return MODELS.resolve(arch)


def model_for(model_config, info) -> NormalizedModel:
    """The network a training config's `model` section describes (arch, activation,
    smooth_grad), sized for the dataset `info` (classes, channels, mean, std)."""
    return build_model(model_config.arch, model_config.activation, info.num_classes, info.channels,
                       info.mean, info.std, model_config.smooth_grad)


def build_model(arch: str, activation: str = "relu", num_classes: int = 10,
                in_channels: int = 3, mean: Sequence[float] = (0.0, 0.0, 0.0),
                std: Sequence[float] = (1.0, 1.0, 1.0), smooth_grad: str = "none") -> NormalizedModel:
    """Build `arch` with `activation` everywhere the architecture has a non-linearity."""
    act = activation_factory(activation, smooth_grad)
    name = resolve_arch(arch)
    wrn = _WRN.match(name)
    if wrn:
        from robeval.models.cifar import wide_resnet

        net = wide_resnet(int(wrn.group(1)), int(wrn.group(2)), act, num_classes, in_channels)
    else:
        net = MODELS.get(name)(act=act, num_classes=num_classes, in_channels=in_channels)
    if len(mean) != in_channels:
        mean, std = list(mean)[:1] * in_channels, list(std)[:1] * in_channels
    return NormalizedModel(net, mean, std)


def model_names() -> list[str]:
    """Registered model names, plus the generic `wrn-D-W` pattern."""
    return MODELS.names() + ["wrn-D-W"]


def state_dict_mismatch(expected: dict, state_dict: dict, shapes: bool = False) -> str:
    """A short description of missing, unexpected and reshaped keys; empty when they fit.

    With `shapes`, the example of a reshaped key names both shapes (the file's vs the model's).
    """
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in expected if k in state_dict
                and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    details = [f"{len(keys)} {what} (e.g. {keys[0]})"
               for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]
    if reshaped:
        key = reshaped[0]
        example = (f"{key}: {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
                   if shapes else key)
        details.append(f"{len(reshaped)} with other shapes (e.g. {example})")
    return "; ".join(details)


def load_state_dict_checked(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load weights, turning key and shape mismatches into a one-line error naming the fix."""
    problem = state_dict_mismatch(model.state_dict(), state_dict, shapes=True)
    if problem:
        raise RobevalError(
            f"{source} does not match the architecture ({problem}): pass the "
            "--model/--activation/dataset it was trained with"
        )
    model.load_state_dict(state_dict)


# Register the architectures (imports register themselves).
from robeval.models import cifar as _cifar  # noqa: E402,F401
from robeval.models import imagenet as _imagenet  # noqa: E402,F401
