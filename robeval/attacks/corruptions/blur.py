"""Blur: defocus, glass, motion and zoom, with CIFAR-10-C's parameters.

Each acts on every channel alike, so they apply to grayscale images unchanged.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from robeval.attacks.corruptions.base import quantise, register
from robeval.attacks.corruptions.draws import Draws
from robeval.attacks.corruptions.filters import disk_kernel, filter2d, gaussian_filter
from robeval.attacks.corruptions.geometry import motion_blur as motion
from robeval.attacks.corruptions.geometry import zoom_sum


@register("defocus_blur", "blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)))
def defocus_blur(images: Tensor, draws: Draws, radius: float, alias_blur: float) -> Tensor:
    """Convolution with an anti-aliased disk of `radius` (OpenCV's `filter2D`, mirrored border)."""
    return filter2d(images, _disk(float(radius), float(alias_blur)), "reflect101")


@lru_cache(maxsize=32)
def _disk(radius: float, alias_blur: float) -> Tensor:
    return disk_kernel(radius, alias_blur)


@register("glass_blur", "blur", ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)))
def glass_blur(images: Tensor, draws: Draws, sigma: float, delta: int, iterations: int) -> Tensor:
    """Gaussian blur (σ), truncated to 8 bits, `iterations` rounds of local pixel shuffling within
    `delta` pixels, Gaussian blur again."""
    shuffled = quantise(gaussian_filter(images, sigma, "edge"))
    for _ in range(int(iterations)):
        shuffled = shuffle(shuffled, draws, int(delta))
    return gaussian_filter(shuffled, sigma, "edge")


def shuffle(images: Tensor, draws: Draws, delta: int) -> Tensor:
    """One round of CIFAR-10-C's local shuffle: for rows h = H−δ .. δ+1 and columns w = W−δ .. δ+1,
    from the bottom right, pixel (h, w) takes the current value of (h + dy, w + dx), with
    dx, dy drawn from −δ .. δ−1 (the reference's swap of two views of a colour image copies)."""
    n, _, h, w = images.shape
    rows, columns = list(range(h - delta, delta, -1)), list(range(w - delta, delta, -1))
    if not rows or not columns:
        return images
    offsets = draws.integers(-delta, delta, (len(rows), len(columns), 2)).to(images.device)
    if delta == 1:  # every source lies above or left of its pixel, so it is not yet overwritten
        return _shuffle_at_once(images, offsets, rows, columns)
    out = images.clone()
    batch = torch.arange(n, device=images.device)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            dx, dy = offsets[:, i, j, 0], offsets[:, i, j, 1]
            out[batch, :, row, column] = out[batch, :, row + dy, column + dx]
    return out


def _shuffle_at_once(images: Tensor, offsets: Tensor, rows: list[int], columns: list[int]) -> Tensor:
    """`shuffle` for δ = 1, where each pixel reads the image as it was before the round."""
    n, c, _, _ = images.shape
    device = images.device
    row = torch.tensor(rows, device=device)[None, :, None] + offsets[..., 1]       # (N, R, K)
    column = torch.tensor(columns, device=device)[None, None, :] + offsets[..., 0]
    batch = torch.arange(n, device=device)[:, None, None]
    values = images.permute(0, 2, 3, 1)[batch, row, column]                         # (N, R, K, C)
    out = images.clone()
    target_rows = torch.tensor(rows, device=device)[:, None]
    target_columns = torch.tensor(columns, device=device)[None, :]
    out.permute(0, 2, 3, 1)[:, target_rows, target_columns] = values
    return out


@register("motion_blur", "blur", ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)))
def motion_blur(images: Tensor, draws: Draws, radius: int, sigma: float) -> Tensor:
    """ImageMagick's motion blur of `radius` and `sigma` at an angle drawn from [−45°, 45°)."""
    return motion(images, int(radius), float(sigma), draws.uniform((), -45, 45))


ZOOMS = tuple(tuple(np.arange(1, stop, 0.01).tolist()) for stop in (1.06, 1.11, 1.16, 1.21, 1.26))


@register("zoom_blur", "blur", ZOOMS)
def zoom_blur(images: Tensor, draws: Draws, *factors: float) -> Tensor:
    """The mean of the image and its central zooms by each of `factors`."""
    return (images + zoom_sum(images, list(factors))) / (len(factors) + 1)
