"""First-order diagnostics of the input loss landscape: linearisation error, gradient norms,
gradient alignment and smoothness, and the PGD-over-FGSM loss gap.

IGR and FGSM training replace the inner maximisation max_δ L(x+δ) by its linearisation
L(x) + ⟨∇ₓL(x), δ⟩. How good that replacement is, sample by sample, is measured by

    R(x, δ) = L(x+δ) − L(x) − ⟨∇ₓL(x), δ⟩,

with ⟨·,·⟩ the per-sample inner product over all pixels. A C¹ network with an M-Lipschitz input
gradient has |R| ≤ (M/2)‖δ‖₂²; a ReLU network's gradient jumps at every kink, so R is
first-order in ‖δ‖ wherever δ crosses one. Large R, a small FGSM loss and a large PGD-over-FGSM
loss gap are the signature of catastrophic overfitting.

L is a per-sample loss of the logits, cross-entropy by default (`loss_fn`), differentiated with
respect to the [0,1] input (normalisation lives inside the model). Every function runs the
model in eval mode, restores each module's training flag afterwards, and takes gradients with
`torch.autograd.grad` with respect to the input only, so no parameter `.grad` is ever written.
Per-sample results are detached CPU tensors of shape (N,) in the input's floating dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robeval.attacks.losses import cross_entropy, input_gradient
from robeval.attacks.pgd import LossFn, eval_step_size, perturb
from robeval.attacks.steps import get_norm
from robeval.errors import RobevalError

QUANTITIES = ("R_fgsm", "R_random", "R_pgd", "grad_l1", "grad_l2", "grad_alignment",
              "grad_lipschitz", "loss_gap")
STATISTICS = ("mean", "median", "q05", "q25", "q75", "q95", "frac_negative", "n", "n_nonfinite")


class LossAndGrad(NamedTuple):
    """Per-sample loss (N,) and its input gradient (shape of the input) at one point."""

    loss: Tensor
    grad: Tensor


# --- helpers ---------------------------------------------------------------------------------

@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode inside the block, then restore every module's own training flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def per_sample_dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a_i, b_i⟩ over all pixels of each sample, shape (N,)."""
    return (a * b).flatten(1).sum(1)


def clip_to_box(x: Tensor, delta: Tensor) -> Tensor:
    """The perturbation δ' = clamp(x+δ, 0, 1) − x, so that x+δ' is a valid image."""
    return (x + delta).clamp(0, 1) - x


def to_cpu(tensor: Tensor) -> Tensor:
    """Detached CPU copy of a per-sample result."""
    return tensor.detach().cpu()


def _check_loss_shape(loss: Tensor, n: int) -> None:
    if loss.shape != (n,):
        raise RobevalError(f"loss_fn must return one loss per sample, shape ({n},); "
                           f"got shape {tuple(loss.shape)} (use reduction='none')")


def _check_delta(x: Tensor, delta: Tensor) -> None:
    if delta.shape != x.shape:
        raise RobevalError(f"delta has shape {tuple(delta.shape)} but the images have shape "
                           f"{tuple(x.shape)}: pass one perturbation per image")


def loss_at(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn = cross_entropy) -> Tensor:
    """Per-sample loss L(x), without gradients (model used as it is: callers set eval mode)."""
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    _check_loss_shape(loss, len(x))
    return loss


def loss_and_grad(model: nn.Module, x: Tensor, y: Tensor,
                  loss_fn: LossFn = cross_entropy) -> LossAndGrad:
    """Per-sample loss L(x) and ∇ₓL(x) (model used as it is: callers set eval mode).

    The gradient of the summed loss is the per-sample gradient because in eval mode each
    output depends on its own input only.
    """
    with torch.enable_grad():
        point = x.detach().clone().requires_grad_(True)
        loss = loss_fn(model(point), y)
        _check_loss_shape(loss, len(x))
        grad = input_gradient(loss.sum(), point)
    return LossAndGrad(loss.detach(), grad.detach())


def _flat_l2(tensor: Tensor) -> Tensor:
    return tensor.flatten(1).norm(dim=1)


# --- perturbations ---------------------------------------------------------------------------

def fgsm_direction(grad: Tensor, eps: float, norm: str = "linf") -> Tensor:
    """The FGSM step from a gradient: ε·sign(∇) for L∞, ε·∇/‖∇‖₂ for L2 (0 where ∇ = 0)."""
    return get_norm(norm).steepest(grad, eps)


def fgsm_delta(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
               loss_fn: LossFn = cross_entropy) -> Tensor:
    """FGSM perturbation ε·sign(∇ₓL) (L∞) or ε·∇ₓL/‖∇ₓL‖₂ (L2), clipped so x+δ stays in [0,1].

    The box clipping only shrinks δ, so it stays in the ε-ball.
    """
    with eval_mode(model):
        grad = loss_and_grad(model, x, y, loss_fn).grad
    return clip_to_box(x, fgsm_direction(grad, eps, norm)).detach()


def random_delta(x: Tensor, eps: float, norm: str = "linf", seed: int = 0) -> Tensor:
    """A uniform sample from the ε-ball per image, clipped so x+δ stays in [0,1].

    Drawn on the CPU from a `torch.Generator` seeded with `seed` (torch's global RNG is not
    touched), so the draw is the same on every device; L2 samples are a direction uniform on
    the sphere times the radius ε·U^(1/d).
    """
    generator = torch.Generator().manual_seed(int(seed))
    shape, dtype = x.shape, x.dtype if x.is_floating_point() else torch.float32
    delta = get_norm(norm).sample(shape, eps, generator, dtype)
    return clip_to_box(x, delta.to(x.device))


def pgd_delta(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
              steps: int = 10, step_size: float | None = None, seed: int = 0,
              loss_fn: LossFn = cross_entropy) -> Tensor:
    """PGD-K perturbation (robeval.attacks.pgd.perturb) from a random start, at the last iterate.

    The start is `random_delta(x, eps, norm, seed)`; the step defaults to `eval_step_size(eps,
    steps)`. PGD keeps x+δ in [0,1] after every step.
    """
    step_size = eval_step_size(eps, steps) if step_size is None else step_size
    start = random_delta(x, eps, norm, seed)
    with eval_mode(model):
        x_adv, _ = perturb(model, x.detach(), y, eps, steps, step_size=step_size, norm=norm,
                           loss_fn=loss_fn, init=start)
    return (x_adv - x).detach()


# --- per-sample quantities -------------------------------------------------------------------

def _linearisation_error(clean: LossAndGrad, perturbed_loss: Tensor, delta: Tensor) -> Tensor:
    return perturbed_loss - clean.loss - per_sample_dot(clean.grad, delta)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-30)


def _gradient_change_ratio(clean_grad: Tensor, perturbed_grad: Tensor, delta: Tensor) -> Tensor:
    delta_norm = _flat_l2(delta)
    ratio = _flat_l2(perturbed_grad - clean_grad) / delta_norm.clamp_min(1e-30)
    return torch.where(delta_norm > 0, ratio, torch.full_like(ratio, math.nan))


def linearisation_error(model: nn.Module, x: Tensor, y: Tensor, delta: Tensor,
                        loss_fn: LossFn = cross_entropy) -> Tensor:
    """R(x,δ) = L(x+δ) − L(x) − ⟨∇ₓL(x), δ⟩ per sample, shape (N,).

    δ is used as given (not projected or clipped): callers pass feasible perturbations.
    R > 0 means the loss rises faster than its linearisation predicts (FGSM underestimates the
    loss at x+δ); R < 0 means the linearisation overestimates it.
    """
    _check_delta(x, delta)
    with eval_mode(model):
        clean = loss_and_grad(model, x, y, loss_fn)
        perturbed = loss_at(model, x + delta, y, loss_fn)
    return to_cpu(_linearisation_error(clean, perturbed, delta))


def input_gradient_norms(model: nn.Module, x: Tensor, y: Tensor,
                         loss_fn: LossFn = cross_entropy) -> dict[str, Tensor]:
    """‖∇ₓL‖₁ ('grad_l1') and ‖∇ₓL‖₂ ('grad_l2') per sample, over all pixels of the [0,1] input."""
    with eval_mode(model):
        grad = loss_and_grad(model, x, y, loss_fn).grad
    flat = grad.flatten(1)
    return {"grad_l1": to_cpu(flat.abs().sum(1)), "grad_l2": to_cpu(flat.norm(dim=1))}


def gradient_alignment(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
                       seed: int = 0, loss_fn: LossFn = cross_entropy) -> Tensor:
    """cos(∇ₓL(x), ∇ₓL(x+η)) per sample, η = `random_delta(x, eps, norm, seed)` (GradAlign).

    A zero gradient gives cosine 0.
    """
    eta = random_delta(x, eps, norm, seed)
    with eval_mode(model):
        clean = loss_and_grad(model, x, y, loss_fn)
        noisy = loss_and_grad(model, x + eta, y, loss_fn)
    return to_cpu(_cosine(clean.grad, noisy.grad))


def gradient_lipschitz(model: nn.Module, x: Tensor, y: Tensor, delta: Tensor,
                       loss_fn: LossFn = cross_entropy) -> Tensor:
    """‖∇ₓL(x+δ) − ∇ₓL(x)‖₂ / ‖δ‖₂ per sample: a local Lipschitz estimate of the input gradient.

    Undefined where δ = 0: those samples are NaN (`summarise` counts and excludes them).
    """
    _check_delta(x, delta)
    with eval_mode(model):
        clean = loss_and_grad(model, x, y, loss_fn)
        perturbed = loss_and_grad(model, x + delta, y, loss_fn)
    return to_cpu(_gradient_change_ratio(clean.grad, perturbed.grad, delta))


def loss_gap(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
             steps: int = 10, seed: int = 0, loss_fn: LossFn = cross_entropy) -> Tensor:
    """L(x+δ_PGD) − L(x+δ_FGSM) per sample (PGD-`steps` from `pgd_delta`, FGSM from `fgsm_delta`).

    Positive where PGD finds a higher loss than the single FGSM step.
    """
    pgd = pgd_delta(model, x, y, eps, norm, steps, seed=seed, loss_fn=loss_fn)
    fgsm = fgsm_delta(model, x, y, eps, norm, loss_fn)
    with eval_mode(model):
        gap = loss_at(model, x + pgd, y, loss_fn) - loss_at(model, x + fgsm, y, loss_fn)
    return to_cpu(gap)


def gradient_diagnostics(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
                         pgd_steps: int = 10, seed: int = 0,
                         loss_fn: LossFn = cross_entropy) -> dict[str, Tensor]:
    """All per-sample diagnostics of one batch, sharing the forward/backward passes.

    Keys: R_fgsm, R_random, R_pgd (R at the FGSM, uniform random and PGD-`pgd_steps` δ),
    grad_l1, grad_l2 (of ∇ₓL(x)), grad_alignment (η = the random δ), grad_lipschitz (δ = the
    PGD δ) and loss_gap (PGD minus FGSM loss). The random δ and the PGD start are both
    `random_delta(x, eps, norm, seed)`, so each value equals that of the standalone function
    with the same arguments; the same inputs and seed give identical numbers.
    """
    with eval_mode(model):
        clean = loss_and_grad(model, x, y, loss_fn)
        fgsm = clip_to_box(x, fgsm_direction(clean.grad, eps, norm))
        rand = random_delta(x, eps, norm, seed)
        pgd = pgd_delta(model, x, y, eps, norm, pgd_steps, seed=seed, loss_fn=loss_fn)
        fgsm_loss = loss_at(model, x + fgsm, y, loss_fn)
        at_random = loss_and_grad(model, x + rand, y, loss_fn)
        at_pgd = loss_and_grad(model, x + pgd, y, loss_fn)
    flat = clean.grad.flatten(1)
    values = {
        "R_fgsm": _linearisation_error(clean, fgsm_loss, fgsm),
        "R_random": _linearisation_error(clean, at_random.loss, rand),
        "R_pgd": _linearisation_error(clean, at_pgd.loss, pgd),
        "grad_l1": flat.abs().sum(1),
        "grad_l2": flat.norm(dim=1),
        "grad_alignment": _cosine(clean.grad, at_random.grad),
        "grad_lipschitz": _gradient_change_ratio(clean.grad, at_pgd.grad, pgd),
        "loss_gap": at_pgd.loss - fgsm_loss,
    }
    return {name: to_cpu(value) for name, value in values.items()}


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return fallback if tensor is None else tensor.device


def batch_diagnostics(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
                      pgd_steps: int = 10, seed: int = 0, batch_size: int = 256,
                      loss_fn: LossFn = cross_entropy) -> dict[str, Tensor]:
    """`gradient_diagnostics` over a large set, `batch_size` images at a time, concatenated.

    Chunks are moved to the model's device; chunk k is seeded with `seed + k`, so the numbers
    are reproducible for a given (seed, batch_size).
    """
    if batch_size < 1:
        raise RobevalError(f"batch_size must be at least 1, got {batch_size}")
    device = _model_device(model, x.device)
    chunks = []
    for index, start in enumerate(range(0, len(x), batch_size)):
        images = x[start:start + batch_size].to(device)
        labels = y[start:start + batch_size].to(device)
        chunks.append(gradient_diagnostics(model, images, labels, eps, norm, pgd_steps,
                                           seed + index, loss_fn))
    if not chunks:
        return {name: torch.empty(0) for name in QUANTITIES}
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}


# --- summaries -------------------------------------------------------------------------------

def _statistics(values: Tensor) -> dict[str, float]:
    array = values.detach().cpu().double().flatten().numpy()
    finite = array[np.isfinite(array)]
    stats: dict[str, float] = {"n": int(finite.size), "n_nonfinite": int(array.size - finite.size)}
    if finite.size == 0:
        nan = math.nan
        return {"mean": nan, "median": nan, "q05": nan, "q25": nan, "q75": nan, "q95": nan,
                "frac_negative": nan, **stats}
    q05, q25, median, q75, q95 = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(finite.mean()), "median": float(median), "q05": float(q05),
            "q25": float(q25), "q75": float(q75), "q95": float(q95),
            "frac_negative": float((finite < 0).mean()), **stats}


def summarise(values: dict[str, Tensor]) -> pd.DataFrame:
    """One row per quantity (index 'quantity'): mean, median, q05, q25, q75, q95, frac_negative, n,
    n_nonfinite.

    Statistics are over the finite values only; `n` counts those and `n_nonfinite` the NaN/±inf
    ones. Quantiles interpolate linearly (numpy's default). `frac_negative` is the fraction of
    values < 0, meaningful for R and the loss gap.
    """
    rows = {name: _statistics(tensor) for name, tensor in values.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(STATISTICS))
    frame.index.name = "quantity"
    return frame.astype({"n": "int64", "n_nonfinite": "int64"})


def summary_dict(values: dict[str, Tensor]) -> dict[str, float]:
    """Flat {'<name>_mean': ..., '<name>_median': ...} as Python floats, for history JSON lines.

    Over finite values only; a quantity with none gives NaN.
    """
    frame = summarise(values)
    flat: dict[str, float] = {}
    for name, row in frame.iterrows():
        flat[f"{name}_mean"] = float(row["mean"])
        flat[f"{name}_median"] = float(row["median"])
    return flat
