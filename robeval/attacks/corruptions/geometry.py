"""Moving pixels on batches (N, C, H, W): shifts, motion blur, zooms, resampling and warps.

Each follows the library call the CIFAR-10-C reference makes, written as tensor operations:
motion blur as ImageMagick's (the port that the `imagecorruptions` package carries), zooms as
`scipy.ndimage.zoom` with order 1, resizing as Pillow's, warps as OpenCV's `warpAffine` and
`scipy.ndimage.map_coordinates` with order 1.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from robeval.attacks.corruptions.filters import motion_taps


def shift(images: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Each image moved down by dy[i] and right by dx[i] pixels, the edge repeated into the gap."""
    n, c, h, w = images.shape
    device = images.device
    rows = (torch.arange(h)[None] - dy.cpu()[:, None]).clamp(0, h - 1).to(device)
    columns = (torch.arange(w)[None] - dx.cpu()[:, None]).clamp(0, w - 1).to(device)
    moved = images.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return moved.gather(3, columns[:, None, None, :].expand(n, c, h, w))


def motion_blur(images: Tensor, radius: int, sigma: float, angles: Tensor) -> Tensor:
    """ImageMagick's motion blur along `angles` (degrees, one per image): the image summed over
    2·radius + 1 shifts along the direction, weighted by `motion_taps`; the sum stops, for an
    image, at the first shift that leaves the image (as the reference does)."""
    n, _, h, w = images.shape
    taps = motion_taps(radius, sigma)
    radians = angles.detach().double().cpu() * (math.pi / 180)
    along_y, along_x = len(taps) * torch.sin(radians), len(taps) * torch.cos(radians)
    length = torch.hypot(along_y, along_x)
    out = torch.zeros_like(images)
    inside = torch.ones(n, dtype=torch.bool)
    for step, tap in enumerate(taps.tolist()):
        dy = -torch.ceil(step * along_y / length - 0.5).long()
        dx = -torch.ceil(step * along_x / length - 0.5).long()
        inside &= (dy.abs() < h) & (dx.abs() < w)
        if not bool(inside.any()):
            break
        weight = (tap * inside.to(images.dtype)).to(images.device).view(n, 1, 1, 1)
        out = out + weight * shift(images, dy, dx)
    return out


@lru_cache(maxsize=256)
def zoom_matrix(size: int, factor: float) -> Tensor:
    """(size, size) linear map of CIFAR-10-C's `clipped_zoom` along one axis: the central
    ceil(size / factor) pixels zoomed by `scipy.ndimage.zoom` (order 1, corners aligned) to
    round(crop · factor) pixels, of which the central `size` are kept."""
    crop = math.ceil(size / factor)
    top = (size - crop) // 2
    zoomed = int(round(crop * factor))
    trim = (zoomed - size) // 2
    step = (crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for row in range(size):
        where = (row + trim) * step
        low = min(int(math.floor(where)), crop - 1)
        frac = where - low if low < crop - 1 else 0.0
        matrix[row, top + low] += 1 - frac
        if frac > 0:
            matrix[row, top + low + 1] += frac
    return matrix


def zoom_sum(images: Tensor, factors: list[float]) -> Tensor:
    """The sum over `factors` of each image clipped-zoomed by that factor (see `zoom_matrix`)."""
    h, w = images.shape[-2:]
    rows = torch.stack([zoom_matrix(h, float(f)) for f in factors]).to(images.device, images.dtype)
    columns = torch.stack([zoom_matrix(w, float(f)) for f in factors]).to(images.device, images.dtype)
    return torch.einsum("khi,ncij,kwj->nchw", rows, images, columns)


@lru_cache(maxsize=64)
def box_resize_matrix(size_in: int, size_out: int) -> Tensor:
    """(size_out, size_in) linear map of Pillow's BOX resize along one axis (its coefficients:
    the box of width max(scale, 1) around each output pixel's centre, sampled at input centres)."""
    scale = size_in / size_out
    widening = max(scale, 1.0)
    support = 0.5 * widening
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for out in range(size_out):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), size_in)
        for index in range(first, last):
            offset = (index - centre + 0.5) / widening
            matrix[out, index] = 1.0 if -0.5 < offset <= 0.5 else 0.0
        total = matrix[out].sum()
        if total > 0:
            matrix[out] /= total
    return matrix


def resample(images: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """rows @ image @ columnsᵀ for every channel of every image (a separable linear resampling)."""
    rows = rows.to(images.device, images.dtype)
    columns = columns.to(images.device, images.dtype)
    return torch.einsum("hi,ncij,wj->nchw", rows, images, columns)


def sample(images: Tensor, rows: Tensor, columns: Tensor, corners: bool) -> Tensor:
    """Bilinear samples of each image at pixel coordinates (N, H, W) `rows`, `columns`.

    `corners=True`: outside the image, mirrored about the edge pixels (OpenCV's default border,
    as `warpAffine` uses); `corners=False`: mirrored including them (scipy's 'reflect', as
    `map_coordinates` uses).
    """
    h, w = images.shape[-2:]
    if corners:
        grid = torch.stack([2 * columns / max(w - 1, 1) - 1, 2 * rows / max(h - 1, 1) - 1], -1)
    else:
        grid = torch.stack([(2 * columns + 1) / w - 1, (2 * rows + 1) / h - 1], -1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="reflection",
                         align_corners=corners)


def affine_from_points(source: Tensor, target: Tensor) -> Tensor:
    """(N, 2, 3) affine maps taking each image's three `source` points (N, 3, 2) to `target`."""
    ones = torch.ones(*source.shape[:2], 1, dtype=source.dtype, device=source.device)
    solved = torch.linalg.solve(torch.cat([source, ones], -1), target)   # (N, 3, 2)
    return solved.transpose(1, 2)


def warp_affine(images: Tensor, points: Tensor, moved: Tensor) -> Tensor:
    """OpenCV's `warpAffine(image, getAffineTransform(points, moved))` per image (bilinear,
    mirrored border): each output pixel reads the input where the map sends it back from.
    Points are (x, y) pixel coordinates, (N, 3, 2)."""
    n, _, h, w = images.shape
    back = affine_from_points(moved.double(), points.double())            # output -> input
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pixels = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w, dtype=torch.float64)])
    where = (back.cpu() @ pixels).view(n, 2, h, w)
    return sample(images, where[:, 1].to(images.device), where[:, 0].to(images.device), corners=True)
