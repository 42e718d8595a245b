"""Per-sample losses an attack maximises: cross-entropy, DLR (Croce & Hein) and CW margin."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robeval.registry import Registry


def cross_entropy(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """CE of the true class; targeted: minus CE of the target class."""
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def input_gradient(loss: Tensor, inputs: Tensor) -> Tensor:
    """∇ of the scalar `loss` with respect to `inputs`; zero where the model cut the inputs out.

    A model that detaches its input (or computes its output without autograd) has no gradient
    to follow; attacks and checks then see a zero gradient instead of an autograd error, which
    the masking checks flag.
    """
    if not loss.requires_grad:
        return torch.zeros_like(inputs)
    (grad,) = torch.autograd.grad(loss, inputs, allow_unused=True)
    return torch.zeros_like(inputs) if grad is None else grad


def _other_max(logits: Tensor, exclude: Tensor) -> Tensor:
    masked = logits.clone()
    masked.scatter_(1, exclude[:, None], float("-inf"))
    return masked.amax(1)


def margin(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """CW margin: max other logit − true logit; targeted: target logit − max other logit."""
    if targets is None:
        return _other_max(logits, labels) - logits.gather(1, labels[:, None]).squeeze(1)
    return logits.gather(1, targets[:, None]).squeeze(1) - _other_max(logits, targets)


def dlr(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Difference of logits ratio: the margin divided by a scale that makes it shift-invariant."""
    ordered = logits.sort(1, descending=True).values
    if targets is None:
        scale = ordered[:, 0] - ordered[:, 2] + 1e-12
    else:  # the targeted DLR of Croce & Hein (2020)
        scale = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12
    return margin(logits, labels, targets) / scale


def dlr_targeted(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """APGD-T's targeted DLR (Croce & Hein, 2020): (z_t − z_y) / (z_π1 − (z_π3 + z_π4)/2)."""
    ordered = logits.sort(1, descending=True).values
    gap = logits.gather(1, targets[:, None]).squeeze(1) - logits.gather(1, labels[:, None]).squeeze(1)
    return gap / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


LOSSES: Registry = Registry("attack loss")
LOSSES.add("ce", cross_entropy, aliases=("cross-entropy", "xent"))
LOSSES.add("dlr", dlr)
LOSSES.add("margin", margin, aliases=("cw",))
