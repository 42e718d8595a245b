"""Noise: Gaussian, shot (Poisson) and impulse (salt-and-pepper), with CIFAR-10-C's parameters.

Every channel of every pixel gets its own draw, so they apply to grayscale images unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robeval.attacks.corruptions.base import register
from robeval.attacks.corruptions.draws import Draws


@register("gaussian_noise", "noise", (0.04, 0.06, 0.08, 0.09, 0.10))
def gaussian_noise(images: Tensor, draws: Draws, std: float) -> Tensor:
    """x + N(0, std²) per pixel and channel."""
    return images + draws.normal(images.shape[1:], 0.0, std)


@register("shot_noise", "noise", (500, 250, 100, 75, 50))
def shot_noise(images: Tensor, draws: Draws, photons: float) -> Tensor:
    """Poisson(x · photons) / photons: fewer photons, more noise."""
    return draws.poisson(images * photons) / photons


@register("impulse_noise", "noise", (0.01, 0.02, 0.03, 0.05, 0.07))
def impulse_noise(images: Tensor, draws: Draws, amount: float) -> Tensor:
    """Salt and pepper (skimage's 's&p'): a share `amount` of the values set to 0 or 1, even odds."""
    flipped = draws.uniform(images.shape[1:]) < amount
    salt = draws.uniform(images.shape[1:]) < 0.5
    return torch.where(flipped, salt.to(images.dtype), images)
