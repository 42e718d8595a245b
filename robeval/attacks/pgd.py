"""Projected gradient descent on the input (FGSM is one step of it), as used for training.

Gradients are taken with respect to the perturbation only, so model parameters never
accumulate gradients while an example is crafted; inputs stay in [0,1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robeval.attacks.steps import get_norm

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> per-sample loss


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, labels, reduction="none")


def default_step_size(eps: float, steps: int, norm: str = "linf") -> float:
    """ε for one step (FGSM, and the SAT recipe's PGD-1); 2.5ε/K for K steps (Madry et al.)."""
    return eps if steps == 1 else 2.5 * eps / steps


def perturb(model: nn.Module, images: Tensor, labels: Tensor, eps: float, steps: int,
            step_size: float | None = None, norm: str = "linf", random_start: bool = False,
            loss_fn: LossFn = cross_entropy, init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Craft x + δ with ‖δ‖ ≤ ε maximising `loss_fn` by `steps` projected gradient steps.

    `init` is a starting perturbation (for example TRADES' small Gaussian); otherwise the start
    is 0, or uniform in the ball with `random_start`. Returns the adversarial images and the
    logits of the first forward pass (at the clean images when there is no random start), which
    the trainer reuses as clean predictions.
    """
    geometry = get_norm(norm)
    step_size = default_step_size(eps, steps, norm) if step_size is None else step_size
    if init is not None:
        delta = geometry.project(init.detach(), eps)
    elif random_start:
        delta = geometry.random_start(images.shape, eps, images)
    else:
        delta = torch.zeros_like(images)
    delta = (images + delta).clamp(0, 1) - images
    first_logits = None
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(images + delta)
        if first_logits is None:
            first_logits = logits.detach()
        loss = loss_fn(logits, labels).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = geometry.project(geometry.step(delta, grad, step_size), eps)
            delta = (images + delta).clamp(0, 1) - images
    if first_logits is None:  # steps == 0
        with torch.no_grad():
            first_logits = model(images + delta)
    return (images + delta).detach(), first_logits
