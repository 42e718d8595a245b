"""Threat models as step classes: PGD itself never branches on the norm."""

from __future__ import annotations

import torch
from torch import Tensor

from robeval.registry import Registry


def _flat_norm(tensor: Tensor, p: float) -> Tensor:
    """Per-sample p-norm, shaped to broadcast against the batch."""
    norms = tensor.flatten(1).norm(p=p, dim=1)
    return norms.view(-1, *([1] * (tensor.dim() - 1)))


class LinfStep:
    """L∞ ball of radius ε: signed-gradient steps, clipping projection."""

    name = "linf"

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


class L2Step:
    """L2 ball of radius ε: normalised-gradient steps, radial projection."""

    name = "l2"

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


NORMS: Registry[type] = Registry("norm")
NORMS.add("linf", LinfStep, aliases=("l-inf", "inf", "linfty"))
NORMS.add("l2", L2Step, aliases=("2",))


def get_norm(name: str) -> LinfStep | L2Step:
    """A step object for the norm `name` (`linf` or `l2`)."""
    return NORMS.get(name)()
