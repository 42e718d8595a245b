"""Digital: brightness, contrast, elastic transform, pixelate and JPEG, with CIFAR-10-C's parameters.

Brightness raises the HSV value of colour images (and the gray level of grayscale ones);
everything else acts on each channel alike. JPEG is Pillow's (libjpeg), as in CIFAR-10-C's
generator, on the CPU, so its bytes do not depend on the device.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from robeval.attacks.corruptions.base import register
from robeval.attacks.corruptions.draws import Draws
from robeval.attacks.corruptions.filters import gaussian_filter
from robeval.attacks.corruptions.geometry import box_resize_matrix, resample, sample, warp_affine

# CIFAR-10-C's elastic parameters, in pixels of a 32-pixel image: (displacement scale, its
# smoothing σ, jitter of the affine anchor points)
ELASTIC = tuple(tuple(32 * share for share in row) for row in (
    (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)))


@register("brightness", "digital", (0.05, 0.1, 0.15, 0.2, 0.3))
def brightness(images: Tensor, draws: Draws, amount: float) -> Tensor:
    """The HSV value (largest channel) raised by `amount`, hue and saturation kept: each pixel is
    scaled by new value / old value (a black pixel becomes gray at the new value)."""
    value = images.amax(1, keepdim=True)
    raised = (value + amount).clamp(0, 1)
    scaled = images * (raised / value.clamp_min(1e-12))
    return torch.where(value > 0, scaled, raised.expand_as(images))


@register("contrast", "digital", (0.75, 0.5, 0.4, 0.3, 0.15))
def contrast(images: Tensor, draws: Draws, factor: float) -> Tensor:
    """Each channel pulled towards its mean: (x − mean) · factor + mean."""
    means = images.mean((2, 3), keepdim=True)
    return (images - means) * factor + means


@register("elastic_transform", "digital", ELASTIC)
def elastic_transform(images: Tensor, draws: Draws, alpha: float, sigma: float, jitter: float) -> Tensor:
    """A random affine warp (three anchor points moved by up to `jitter` pixels), then a smooth
    random displacement field: U(−1, 1) per pixel, Gaussian-smoothed (σ `sigma`, truncated at
    3σ, mirrored border) and scaled by `alpha`, read bilinearly with a mirrored border."""
    n, _, h, w = images.shape
    middle_x, middle_y, reach = w // 2, h // 2, min(h, w) // 3
    anchors = torch.tensor([[middle_x + reach, middle_y + reach], [middle_x + reach, middle_y - reach],
                            [middle_x - reach, middle_y - reach]], dtype=torch.float64)
    moved = anchors + draws.uniform((3, 2), -jitter, jitter).double().cpu()
    warped = warp_affine(images, anchors.expand(n, 3, 2), moved)
    dx = gaussian_filter(draws.uniform((1, h, w), -1, 1), sigma, "symmetric", truncate=3)[:, 0] * alpha
    dy = gaussian_filter(draws.uniform((1, h, w), -1, 1), sigma, "symmetric", truncate=3)[:, 0] * alpha
    ys, xs = torch.meshgrid(torch.arange(h, device=images.device, dtype=images.dtype),
                            torch.arange(w, device=images.device, dtype=images.dtype), indexing="ij")
    return sample(warped, ys + dy, xs + dx, corners=False)


@register("pixelate", "digital", (0.95, 0.9, 0.85, 0.75, 0.65))
def pixelate(images: Tensor, draws: Draws, factor: float) -> Tensor:
    """Pillow's BOX resize down to int(side · factor) pixels and back up, rounded to 8 bits."""
    h, w = images.shape[-2:]
    small_h, small_w = max(int(h * factor), 1), max(int(w * factor), 1)
    rows = box_resize_matrix(small_h, h) @ box_resize_matrix(h, small_h)
    columns = box_resize_matrix(small_w, w) @ box_resize_matrix(w, small_w)
    return torch.round(resample(images, rows, columns) * 255) / 255   # Pillow returns 8-bit images


@register("jpeg_compression", "digital", (80, 65, 58, 50, 40))
def jpeg_compression(images: Tensor, draws: Draws, quality: int) -> Tensor:
    """Saved as JPEG at `quality` and read back, by Pillow (libjpeg) on the CPU, as CIFAR-10-C's
    generator does; grayscale images as grayscale JPEGs."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = [_jpeg(image, int(quality)) for image in pixels]
    out = torch.from_numpy(np.stack(decoded)).to(images.device).float() / 255
    return out.reshape(images.shape[0], *images.shape[2:], images.shape[1]).permute(0, 3, 1, 2)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """One (H, W, C) uint8 image through a JPEG file in memory."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))
