"""The corruption registry and `corrupt`, which every corruption runs through.

A corruption is a function `apply(images, draws, *parameters)` on a batch of images in [0,1],
(N, C, H, W) on any device, with the CIFAR-10-C parameters of its five severities. `corrupt`
draws the randomness per image (`robeval.attacks.corruptions.draws`), applies it, and truncates
the result to 8 bits as the CIFAR-10-C files are stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from robeval.attacks.corruptions.draws import Draws, sample_seeds
from robeval.errors import RobevalError, UnknownNameError, short_repr
from robeval.registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)
GROUPS = ("noise", "blur", "weather", "digital")   # Hendrycks & Dietterich's four families
ORDER = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
         "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
         "jpeg_compression")   # CIFAR-10-C's order, by family

Apply = Callable[..., Tensor]   # apply(images, draws, *parameters) -> images


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: its CIFAR-10-C name, family, function and severity parameters."""

    name: str
    group: str
    apply: Apply
    parameters: tuple   # one entry per severity 1..5: a number or a tuple of numbers


CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def register(name: str, group: str, parameters: Sequence) -> Callable[[Apply], Apply]:
    """Decorator: register `apply` as corruption `name` of `group` with one parameter entry per
    severity (the CIFAR-10-C values, in order of severity)."""
    if group not in GROUPS or len(parameters) != len(SEVERITIES):
        raise ValueError(f"corruption {name!r}: group {group!r}, {len(parameters)} severities")

    def add(apply: Apply) -> Apply:
        CORRUPTIONS.add(name, Corruption(name, group, apply, tuple(parameters)))
        return apply
    return add


def corruption_names() -> list[str]:
    """The registered corruption names in CIFAR-10-C's order (`ORDER`), any others after them."""
    names = [CORRUPTIONS.get(key).name for key in CORRUPTIONS.names()]
    return sorted(names, key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name))


def get_corruption(name: str) -> Corruption:
    """The corruption called `name` (underscores or hyphens, any case); one-line error otherwise."""
    try:
        return CORRUPTIONS.get(name)
    except UnknownNameError:
        raise UnknownNameError(f"unknown corruption {short_repr(name)}; known: "
                               f"{', '.join(corruption_names())}, or a family: {', '.join(GROUPS)}") from None


def parameters_of(corruption: Corruption, severity: int) -> tuple:
    """The parameters of `corruption` at `severity` (1..5), as a tuple."""
    if severity not in SEVERITIES:
        raise RobevalError(f"severity {severity!r} of {corruption.name} is outside 1..5")
    entry = corruption.parameters[severity - 1]
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def quantise(images: Tensor) -> Tensor:
    """Clipped to [0,1] and truncated to 8 bits, as `np.uint8(...)` stores CIFAR-10-C (the 1e-4
    keeps values that float rounding put just below a level on it)."""
    return torch.floor(images.clamp(0, 1) * 255 + 1e-4) / 255


@torch.no_grad()
def corrupt(images: Tensor, name: str, severity: int, indices: Sequence[int], seed: int = 0,
            parameters: tuple | None = None) -> Tensor:
    """`images` (N, C, H, W, in [0,1]) under corruption `name` at `severity`, on their device.

    `indices` are the images' positions in the test set: with `seed` they fix each image's
    randomness, so the result does not depend on the batch. `parameters` replaces the
    CIFAR-10-C parameters of the severity (to compare with another parameter table).
    """
    corruption = get_corruption(name)
    if len(indices) != len(images):
        raise ValueError(f"{len(indices)} indices for {len(images)} images")
    chosen = parameters_of(corruption, severity) if parameters is None else tuple(parameters)
    draws = Draws(sample_seeds(seed, corruption.name, severity, indices), images.device)
    return quantise(corruption.apply(images.float(), draws, *chosen))
