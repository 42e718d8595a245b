"""Weather: snow, frost and fog, with CIFAR-10-C's parameters.

On grayscale images the snow's brightening uses the image itself as its luminance and the frost
texture is turned to gray (ITU-R 601 weights), as the `imagecorruptions` package does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robeval.attacks.corruptions.base import register
from robeval.attacks.corruptions.draws import Draws
from robeval.attacks.corruptions.fractal import plasma_fractal
from robeval.attacks.corruptions.frost import frost_textures
from robeval.attacks.corruptions.geometry import motion_blur, zoom_sum

SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
LUMA = (0.299, 0.587, 0.114)   # OpenCV's RGB→gray weights


def luminance(images: Tensor) -> Tensor:
    """(N, 1, H, W) luminance: OpenCV's weighted sum of RGB, or the image itself if grayscale."""
    if images.shape[1] != 3:
        return images.mean(1, keepdim=True)
    weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


@register("snow", "weather", SNOW)
def snow(images: Tensor, draws: Draws, mean: float, std: float, zoom: float, threshold: float,
         radius: int, sigma: float, mix: float) -> Tensor:
    """A Gaussian snow layer (mean, std) zoomed by `zoom`, thresholded, motion-blurred along an
    angle from [−135°, −45°), added twice (once turned 180°) to the image brightened by `mix`."""
    _, _, h, w = images.shape
    layer = zoom_sum(draws.normal((1, h, w), mean, std), [float(zoom)])
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255                 # stored as an 8-bit image
    layer = motion_blur(layer, int(radius), float(sigma), draws.uniform((), -135, -45))
    layer = torch.round(layer * 255) / 255                             # blurred into 8 bits
    lit = mix * images + (1 - mix) * torch.maximum(images, luminance(images) * 1.5 + 0.5)
    return lit + layer + layer.flip(-2, -1)


@register("frost", "weather", ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)))
def frost(images: Tensor, draws: Draws, image_weight: float, frost_weight: float) -> Tensor:
    """image_weight · x + frost_weight · a random crop of one of the frost textures."""
    n, c, h, w = images.shape
    textures = frost_textures(h, w, c, images.device)                 # (K, C, T, T)
    side = textures.shape[-1]
    pick = draws.integers(0, len(textures), ())
    top, left = draws.integers(0, side - h, ()), draws.integers(0, side - w, ())
    rows = (top[:, None] + torch.arange(h, device=images.device))[:, :, None]      # (N, H, 1)
    columns = (left[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (N, 1, W)
    crops = textures[pick[:, None, None], :, rows, columns].permute(0, 3, 1, 2)    # (N, C, H, W)
    return image_weight * images + frost_weight * crops


@register("fog", "weather", ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)))
def fog(images: Tensor, draws: Draws, thickness: float, decay: float) -> Tensor:
    """A plasma fractal (roughness `decay`) added with weight `thickness`, then rescaled so the
    image's brightest value keeps its level relative to the fog."""
    _, _, h, w = images.shape
    size = 1 << (max(h, w, 2) - 1).bit_length()    # the next power of two
    layer = plasma_fractal(draws, size, float(decay))[:, None, :h, :w]
    peak = images.amax((1, 2, 3), keepdim=True)
    return (images + thickness * layer) * peak / (peak + thickness)
