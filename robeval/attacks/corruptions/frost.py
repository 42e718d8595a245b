"""Synthetic frost textures, made deterministically, in place of the reference's frost photographs.

CIFAR-10-C's frost blends each image with a random 32×32 crop of one of five photographs of
frosted glass (shrunk to a fifth of their size). Those photographs are not ours to ship, so
robeval draws five textures instead: ice needles with side branches, splatted onto a 128×128
grid and softened, over a plasma-fractal haze, each tinted and spread to the mean colour and
contrast measured on one of the five photographs at the size CIFAR-10-C crops from. They are
made from fixed seeds, so every run and machine uses the same textures, and are cached once per
image size, channel count and device. Images wider than the textures get them enlarged
(bilinear) to 1.1 times their side; grayscale images get them in gray (ITU-R 601 weights).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from robeval.attacks.corruptions.draws import Draws
from robeval.attacks.corruptions.filters import gaussian_filter
from robeval.attacks.corruptions.fractal import plasma_fractal

SIDE = 128
NEEDLES = 350
GRAY = (0.2989, 0.5870, 0.1140)
# (mean R, G, B; standard deviation) of each of the reference's five photographs, shrunk as CIFAR-10-C
# shrinks them (the second and third are the same photograph).
LOOKS = (((0.30, 0.58, 0.65), 0.10), ((0.79, 0.81, 0.84), 0.085), ((0.79, 0.81, 0.84), 0.085),
         ((0.54, 0.60, 0.65), 0.115), ((0.44, 0.48, 0.53), 0.17))


@lru_cache(maxsize=8)
def frost_textures(height: int, width: int, channels: int, device: torch.device) -> Tensor:
    """(5, channels, T, T) frost textures in [0,1] for images of `height` × `width`, T > both."""
    textures = _base_textures()
    needed = max(height, width)
    if needed >= SIDE:
        side = math.ceil(1.1 * needed) + 1
        textures = F.interpolate(textures, size=(side, side), mode="bilinear", align_corners=False)
    if channels != 3:
        gray = torch.tensor(GRAY).view(1, 3, 1, 1)
        textures = (textures * gray).sum(1, keepdim=True).expand(-1, channels, -1, -1)
    return textures.clamp(0, 1).contiguous().to(device)


@lru_cache(maxsize=1)
def _base_textures() -> Tensor:
    """The five 128×128 RGB textures (see the module doc)."""
    return torch.stack([_texture(index, mean, spread) for index, (mean, spread) in enumerate(LOOKS)])


def _texture(index: int, mean: tuple[float, float, float], spread: float) -> Tensor:
    """Ice needles over a haze, standardised, then tinted to `mean` and spread by `spread`."""
    generator = torch.Generator().manual_seed(7919 + index)
    haze = plasma_fractal(Draws([7919 + index], "cpu"), SIDE, 2.0)[0]
    structure = 0.6 * _standard(haze) + _standard(_needles(generator))
    structure = _standard(structure)
    colour = torch.tensor(mean).view(3, 1, 1)
    return colour + spread * structure[None]


def _standard(field: Tensor) -> Tensor:
    return (field - field.mean()) / field.std().clamp_min(1e-8)


def _needles(generator: torch.Generator) -> Tensor:
    """(SIDE, SIDE) needles: bright segments in random directions, each with two side branches
    at ±60°, sampled every half pixel, splatted bilinearly (wrapping round) and softened."""
    start = torch.rand(NEEDLES, 2, generator=generator) * SIDE
    angle = torch.rand(NEEDLES, generator=generator) * math.pi
    length = 3 + 9 * torch.rand(NEEDLES, generator=generator)
    bright = 0.4 + 0.6 * torch.rand(NEEDLES, generator=generator)
    fork = start + (0.3 + 0.4 * torch.rand(NEEDLES, 1, generator=generator)) * length[:, None] \
        * torch.stack([torch.sin(angle), torch.cos(angle)], 1)
    starts = torch.cat([start, fork, fork])
    angles = torch.cat([angle, angle + math.pi / 3, angle - math.pi / 3])
    lengths = torch.cat([length, 0.4 * length, 0.4 * length])
    brights = torch.cat([bright, 0.7 * bright, 0.7 * bright])
    along = torch.arange(0, float(lengths.max()) + 0.5, 0.5)
    keep = along[None] <= lengths[:, None]                                   # (S, P)
    ys = starts[:, :1] + along[None] * torch.sin(angles)[:, None]
    xs = starts[:, 1:] + along[None] * torch.cos(angles)[:, None]
    field = _splat(ys[keep], xs[keep], brights[:, None].expand_as(keep)[keep])
    field = gaussian_filter(field[None, None], 0.6, "symmetric")[0, 0]
    return 1 - torch.exp(-field)


def _splat(ys: Tensor, xs: Tensor, weights: Tensor) -> Tensor:
    """Points added bilinearly onto a SIDE×SIDE grid that wraps round."""
    field = torch.zeros(SIDE * SIDE)
    y0, x0 = torch.floor(ys), torch.floor(xs)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        share = (1 - (ys - y0 - dy).abs()) * (1 - (xs - x0 - dx).abs()) * weights
        where = ((y0.long() + dy) % SIDE) * SIDE + (x0.long() + dx) % SIDE
        field.index_add_(0, where, share)
    return field.view(SIDE, SIDE)
