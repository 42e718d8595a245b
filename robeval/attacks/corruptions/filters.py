"""Linear filters on batches (N, C, H, W) with the border rules of scipy, skimage and OpenCV.

Borders, by the names used here (each the rule the reference's library call applies):

- ``edge``: repeat the edge pixel (scipy's 'nearest', skimage's default for `gaussian`);
- ``symmetric``: mirror including the edge pixel, d c b a | a b c d (scipy's 'reflect');
- ``reflect101``: mirror about the edge pixel, d c b | a b c d (OpenCV's default border).

Padding is done by index, so a kernel may be wider than the image (scipy's rule then repeats).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

BORDERS = ("edge", "symmetric", "reflect101")


def padded_index(size: int, before: int, after: int, border: str) -> Tensor:
    """Indices into range(size) for the positions -before .. size - 1 + after under `border`."""
    position = torch.arange(-before, size + after)
    if border == "edge" or size == 1:
        return position.clamp(0, size - 1)
    if border == "symmetric":
        period = position % (2 * size)
        return torch.where(period < size, period, 2 * size - 1 - period)
    if border == "reflect101":
        period = position % (2 * size - 2)
        return torch.where(period < size, period, 2 * size - 2 - period)
    raise ValueError(f"unknown border {border!r}; known: {', '.join(BORDERS)}")


def pad(images: Tensor, rows: int, columns: int, border: str) -> Tensor:
    """`images` padded by `rows` above and below and `columns` left and right."""
    height, width = images.shape[-2:]
    rows_index = padded_index(height, rows, rows, border).to(images.device)
    columns_index = padded_index(width, columns, columns, border).to(images.device)
    return images.index_select(-2, rows_index).index_select(-1, columns_index)


def filter2d(images: Tensor, kernel: Tensor, border: str) -> Tensor:
    """Each channel correlated with the odd-sized 2-D `kernel`, centred, under `border`."""
    n, c, h, w = images.shape
    rows, columns = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = pad(images.reshape(n * c, 1, h, w), rows, columns, border)
    weight = kernel.to(images.device, images.dtype)[None, None]
    return F.conv2d(padded, weight).reshape(n, c, h, w)


def separable(images: Tensor, taps: Tensor, border: str) -> Tensor:
    """`filter2d` with the outer product of the 1-D `taps` with itself, one axis at a time."""
    n, c, h, w = images.shape
    radius = len(taps) // 2
    flat = images.reshape(n * c, 1, h, w)
    weight = taps.to(images.device, images.dtype)
    flat = F.conv2d(pad(flat, radius, 0, border), weight.view(1, 1, -1, 1))
    flat = F.conv2d(pad(flat, 0, radius, border), weight.view(1, 1, 1, -1))
    return flat.reshape(n, c, h, w)


def gaussian_taps(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy's Gaussian kernel: radius int(truncate·σ + 0.5), weights summing to 1 ([1] at σ≈0)."""
    if sigma <= 1e-15:
        return torch.ones(1, dtype=torch.float64)
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def gaussian_filter(images: Tensor, sigma: float, border: str = "edge", truncate: float = 4.0) -> Tensor:
    """Per-channel Gaussian blur as skimage's `gaussian` (σ in pixels, scipy's kernel)."""
    taps = gaussian_taps(sigma, truncate)
    return images if len(taps) == 1 else separable(images, taps, border)


def opencv_gaussian_taps(size: int, sigma: float) -> Tensor:
    """OpenCV's `getGaussianKernel(size, sigma)` for σ > 0: sampled and normalised."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The defocus kernel of CIFAR-10-C: a normalised disk on a 17×17 grid (wider for radius > 8),
    smoothed by a 3×3 (5×5) OpenCV Gaussian of σ `alias_blur`, trimmed to its non-zero support."""
    reach = 8 if radius <= 8 else int(radius)
    size = 3 if radius <= 8 else 5
    grid = torch.arange(-reach, reach + 1, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).double()
    disk = (disk / disk.sum())[None, None]
    kernel = separable(disk, opencv_gaussian_taps(size, alias_blur), "reflect101")[0, 0]
    return trim(kernel)


def trim(kernel: Tensor) -> Tensor:
    """A square, centred kernel without its all-zero outer rings (the same filter, smaller)."""
    centre = kernel.shape[0] // 2
    rows, columns = (kernel != 0).nonzero(as_tuple=True)
    half = int(torch.maximum((rows - centre).abs().max(), (columns - centre).abs().max()))
    return kernel[centre - half:centre + half + 1, centre - half:centre + half + 1]


def motion_taps(radius: int, sigma: float) -> Tensor:
    """ImageMagick's motion-blur weights: half a Gaussian over 2·radius + 1 steps, summing to 1."""
    steps = torch.arange(2 * radius + 1, dtype=torch.float64)
    taps = torch.exp(-(steps**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return taps / taps.sum()
