"""The plasma fractal (diamond-square) of CIFAR-10-C's fog, one height map per image."""

from __future__ import annotations

import torch
from torch import Tensor

from robeval.attacks.corruptions.draws import Draws


def plasma_fractal(draws: Draws, size: int, decay: float) -> Tensor:
    """(N, size, size) diamond-square height maps in [0,1], one per image (`size` a power of two),
    as CIFAR-10-C's `plasma_fractal`: midpoints are the mean of their neighbours plus
    wibble·U(−wibble, wibble), the wibble starting at 100 and divided by `decay` per level."""
    n = len(draws)
    heights = torch.zeros(n, size, size, dtype=torch.float64, device=draws.device)
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = heights[:, 0::step, 0::step]
        around = corners + corners.roll(-1, 1)
        around = around + around.roll(-1, 2)
        heights[:, half::step, half::step] = around / 4 + _wibble(draws, around.shape, wibble)
        centres, corners = heights[:, half::step, half::step], heights[:, 0::step, 0::step]
        left = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        heights[:, 0::step, half::step] = left / 4 + _wibble(draws, left.shape, wibble)
        top = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        heights[:, half::step, 0::step] = top / 4 + _wibble(draws, top.shape, wibble)
        step, wibble = half, wibble / decay
    heights = heights - heights.amin((1, 2), keepdim=True)
    return (heights / heights.amax((1, 2), keepdim=True)).float()


def _wibble(draws: Draws, shape: torch.Size, wibble: float) -> Tensor:
    return wibble * draws.uniform(shape[1:], -wibble, wibble).double()
