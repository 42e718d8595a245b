"""Threat models as step classes: PGD itself never branches on the norm."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robeval.registry import Registry


def _flat_norm(tensor: Tensor, p: float) -> Tensor:
    """Per-sample p-norm, shaped to broadcast against the batch."""
    norms = tensor.flatten(1).norm(p=p, dim=1)
    return norms.view(-1, *([1] * (tensor.dim() - 1)))


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """A per-sample tensor shaped to broadcast against a batch like `like`."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class LinfStep:
    """L∞ ball of radius ε: signed-gradient steps, clipping projection."""

    name = "linf"
    display_scale = 255   # radii are written in units of 1/255 (8/255 → "8")

    def project(self, delta: Tensor, eps: float) -> Tensor:
        """The closest point of the ε-ball."""
        return delta.clamp(-eps, eps)

    def step(self, delta: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One ascent step of length `step_size` in the L∞ geometry."""
        return delta + step_size * grad.sign()

    def random_start(self, shape: torch.Size, eps: float, like: Tensor) -> Tensor:
        """A uniform sample from the ε-ball."""
        return torch.empty(shape, device=like.device, dtype=like.dtype).uniform_(-eps, eps)

    def norm(self, delta: Tensor) -> Tensor:
        """Per-sample L∞ norm, shape (N,)."""
        return delta.flatten(1).abs().amax(dim=1)

    def dual_norm(self, grad: Tensor) -> Tensor:
        """Per-sample ℓ1 norm, the dual of L∞: the largest ⟨grad, δ⟩ over the unit ball."""
        return grad.flatten(1).abs().sum(dim=1)

    def steepest(self, grad: Tensor, eps: float) -> Tensor:
        """The ε-ball point of steepest ascent along `grad` (the FGSM step): ε·sign(∇)."""
        return eps * grad.sign()

    def cube_radius(self, image_numel: int) -> float:
        """A radius whose ball around any image holds the whole [0,1] cube."""
        return 1.0

    def scaled_start(self, shape: torch.Size, eps: float, like: Tensor) -> Tensor:
        """APGD's start (pyautoattack's): a uniform draw in [−1,1] scaled so its largest entry is ε."""
        draw = 2 * torch.rand(shape, device=like.device, dtype=like.dtype) - 1
        return eps * draw / (_per_sample(draw.flatten(1).abs().amax(1), draw) + 1e-12)

    def sample(self, shape: torch.Size, eps: float, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """A uniform sample from the ε-ball, drawn on the CPU from `generator`."""
        return (2 * torch.rand(shape, generator=generator, dtype=dtype) - 1) * eps


class L2Step:
    """L2 ball of radius ε: normalised-gradient steps, radial projection."""

    name = "l2"
    display_scale = 1

    def project(self, delta: Tensor, eps: float) -> Tensor:
        """Scale down the perturbations that leave the ε-ball."""
        return delta * (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)

    def step(self, delta: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One ascent step of length `step_size` along the normalised gradient."""
        return delta + step_size * grad / _flat_norm(grad, 2).clamp_min(1e-12)

    def random_start(self, shape: torch.Size, eps: float, like: Tensor) -> Tensor:
        """A uniform sample from the ε-ball (direction on the sphere, radius ε·U^(1/d))."""
        direction = torch.randn(shape, device=like.device, dtype=like.dtype)
        direction = direction / _flat_norm(direction, 2).clamp_min(1e-12)
        dims = direction[0].numel()
        radius = torch.rand(shape[0], device=like.device, dtype=like.dtype) ** (1.0 / dims)
        return direction * (eps * radius).view(-1, *([1] * (len(shape) - 1)))

    def norm(self, delta: Tensor) -> Tensor:
        """Per-sample L2 norm, shape (N,)."""
        return delta.flatten(1).norm(dim=1)

    def dual_norm(self, grad: Tensor) -> Tensor:
        """Per-sample ℓ2 norm (L2 is its own dual)."""
        return grad.flatten(1).norm(dim=1)

    def steepest(self, grad: Tensor, eps: float) -> Tensor:
        """The ε-ball point of steepest ascent along `grad`: ε·∇/‖∇‖₂ (0 where ∇ = 0)."""
        return eps * grad / _per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-30), grad)

    def cube_radius(self, image_numel: int) -> float:
        """A radius whose ball around any image holds the whole [0,1] cube: √d."""
        return math.sqrt(image_numel)

    def scaled_start(self, shape: torch.Size, eps: float, like: Tensor) -> Tensor:
        """APGD's start (pyautoattack's): a Gaussian draw scaled to norm ε."""
        draw = torch.randn(shape, device=like.device, dtype=like.dtype)
        return eps * draw / (_per_sample(draw.flatten(1).norm(dim=1), draw) + 1e-12)

    def sample(self, shape: torch.Size, eps: float, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """A uniform sample from the ε-ball (direction on the sphere, radius ε·U^(1/d)), drawn on
        the CPU from `generator`."""
        direction = torch.randn(shape, generator=generator, dtype=dtype)
        direction = direction / _per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-30), direction)
        radius = eps * torch.rand(shape[0], generator=generator, dtype=dtype) ** (1.0 / direction[0].numel())
        return direction * _per_sample(radius, direction)


NORMS: Registry[type] = Registry("norm")
NORMS.add("linf", LinfStep, aliases=("l-inf", "inf", "linfty"))
NORMS.add("l2", L2Step, aliases=("2",))


def get_norm(name: str) -> LinfStep | L2Step:
    """A step object for the norm `name` (`linf` or `l2`)."""
    return NORMS.get(name)()
