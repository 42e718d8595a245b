"""Projected gradient descent on the input (FGSM is one step of it), as used for training.

Gradients are taken with respect to the perturbation only, so model parameters never
accumulate gradients while an example is crafted; inputs stay in [0,1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from robeval.activations import smooth_relu_gradients
from robeval.attacks.base import ATTACKS, add_pattern, evaluate_examples, margins
from robeval.attacks.losses import cross_entropy, input_gradient
from robeval.attacks.steps import get_norm
from robeval.errors import RobevalError
from robeval.spec import MAX_ITERATIONS, OPTION_MAXIMA, format_spec, positive_option

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> per-sample loss


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
        grad = input_gradient(loss, delta)
        with torch.no_grad():
            delta = geometry.project(geometry.step(delta, grad, step_size), eps)
            delta = (images + delta).clamp(0, 1) - images
    if first_logits is None:  # steps == 0
        with torch.no_grad():
            first_logits = model(images + delta)
    return (images + delta).detach(), first_logits


# --- evaluation attack -----------------------------------------------------------------------

def eval_step_size(eps: float, steps: int) -> float:
    """Default evaluation step: ε for one step, else max(ε/4, 2.5ε/K).

    ε/4 is the step of Bag of Tricks' PGD-10 (2/255 at ε=8/255) and of SAT's PGD-200
    (1/255 at ε=4/255); 2.5ε/K (Madry et al.) takes over for few steps so that K steps can
    still cross the ball.
    """
    return eps if steps == 1 else max(eps / 4, 2.5 * eps / steps)


class PGDAttack:
    """PGD-K with restarts, CE/DLR/margin losses and a targeted option (FGSM is PGD-1).

    A sample is broken as soon as any iterate is misclassified; broken samples leave the
    batch, so only still-robust samples cost compute. With `eot=M` (expectation over
    transformation, for models whose outputs are random) each step follows the gradient of the
    loss summed over M passes at the same point. For robust samples the iterate with the
    lowest margin is returned. With `smooth`, gradients are those of the network with its
    ReLUs replaced by parametric Softplus (SAT §3.2); the forward pass is unchanged.
    """

    def __init__(self, threat, steps: int, step: float | None = None, restarts: int = 1,
                 random_start: bool = True, loss: str = "ce", targeted: bool = False,
                 smooth: bool = False, name: str | None = None, eot: int = 1):
        from robeval.attacks.losses import LOSSES

        label = name or f"pgd{steps}"
        self.eps, self.norm = threat.eps, threat.norm
        self.steps = _count_option(label, "steps", steps)
        self.restarts = _count_option(label, "restarts", restarts)
        self.eot = _count_option(label, "eot", eot)
        self.step = (eval_step_size(self.eps, self.steps) if step is None
                     else _step_option(label, step))
        self.random_start = _flag_option(label, "random_start", random_start)
        self.targeted = _flag_option(label, "targeted", targeted)
        self.smooth = smooth
        self.loss_name = LOSSES.resolve(loss)
        self.loss_fn = LOSSES.get(loss)
        self.spec = format_spec(name or f"pgd{self.steps}" + ("-smooth" if smooth else ""),
                                self._non_default_options(name == "fgsm"))

    def _non_default_options(self, fgsm: bool) -> dict:
        """The options that differ from the defaults (which ε and K determine), for the spec."""
        options = {"step": round(self.step, 8), "restarts": self.restarts,
                   "random_start": self.random_start, "loss": self.loss_name,
                   "targeted": self.targeted, "eot": self.eot}
        defaults = {"step": round(eval_step_size(self.eps, self.steps), 8), "restarts": 1,
                    "random_start": not fgsm, "loss": "ce", "targeted": False, "eot": 1}
        return {key: value for key, value in options.items() if value != defaults[key]}

    @classmethod
    def from_spec(cls, steps: int, smooth: bool, threat, options: dict) -> PGDAttack:
        """`pgdK[-smooth](step=..., restarts=..., loss=..., targeted=..., random_start=..., eot=...)`."""
        allowed = {"step", "restarts", "loss", "targeted", "random_start", "eot"}
        unknown = set(options) - allowed
        if unknown:
            raise RobevalError(f"pgd{steps} has no option {', '.join(sorted(unknown))}; "
                               f"options: {', '.join(sorted(allowed))}")
        return cls(threat, steps, smooth=smooth, **options)

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int):
        """Attack a batch; returns per-sample outcomes (see `AttackOutcome`)."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            context = smooth_relu_gradients(model) if self.smooth else nullcontext()
            with context:
                best, iterations = self._attack(model, images, labels)
        finally:
            torch.random.set_rng_state(generator_state)
        return evaluate_examples(model, best, images, labels, self.norm, iterations.cpu())

    def _targets(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor | None:
        if not self.targeted:
            return None
        with torch.no_grad():
            logits = model(images)
        logits.scatter_(1, labels[:, None], float("-inf"))
        return logits.argmax(1)  # the most likely wrong class

    def _attack(self, model: nn.Module, images: Tensor, labels: Tensor):
        geometry = get_norm(self.norm)
        targets = self._targets(model, images, labels)
        best = images.clone()
        best_margin = torch.full((len(images),), float("inf"), device=images.device)
        iterations = torch.zeros(len(images), dtype=torch.long, device=images.device)
        active = torch.arange(len(images), device=images.device)
        for _ in range(self.restarts):
            if len(active) == 0:
                break
            x, y = images[active], labels[active]
            t = None if targets is None else targets[active]
            if self.random_start:
                delta = geometry.random_start(x.shape, self.eps, x)
            else:
                delta = torch.zeros_like(x)
            delta = (x + delta).clamp(0, 1) - x
            index = active
            for step in range(self.steps + 1):
                delta.requires_grad_(True)
                logits = model(x + delta)
                with torch.no_grad():
                    margin = margins(logits, y)
                    better = margin < best_margin[index]
                    best[index[better]] = (x + delta)[better].detach()
                    best_margin[index[better]] = margin[better]
                    iterations[index] += 1 if step > 0 else 0
                    keep = logits.argmax(1) == y
                if step == self.steps or not keep.any():
                    break
                loss = self.loss_fn(logits, y, t).sum()
                for _ in range(self.eot - 1):  # EOT: the gradient of the loss averaged over passes
                    loss = loss + self.loss_fn(model(x + delta), y, t).sum()
                grad = input_gradient(loss, delta)
                with torch.no_grad():
                    delta = delta.detach()[keep]
                    x, y, grad, index = x[keep], y[keep], grad[keep], index[keep]
                    t = None if t is None else t[keep]
                    delta = geometry.project(geometry.step(delta, grad, self.step), self.eps)
                    delta = (x + delta).clamp(0, 1) - x
            still_robust = torch.zeros(len(images), dtype=torch.bool, device=images.device)
            still_robust[index[keep]] = True
            active = active[still_robust[active]]
        return best, iterations


def _count_option(attack: str, key: str, value: object) -> int:
    """A step or restart count as a positive integer, or an error naming the option."""
    hint = "pgdK needs K >= 1, e.g. pgd10" if key == "steps" else f"write e.g. {key}=2"
    return positive_option(attack, key, value, hint, maximum=OPTION_MAXIMA.get(key, MAX_ITERATIONS))


def _step_option(attack: str, value: object) -> float:
    """A step size as a positive finite number, or an error naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise RobevalError(f"{attack}: step={value} must be a positive number (write e.g. step=2/255)")
    return float(value)


def _flag_option(attack: str, key: str, value: object) -> bool:
    """A yes/no option (true/false or 1/0), or an error naming the option."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise RobevalError(f"{attack}: {key}={value} must be true or false (or 1 or 0)")


def _fgsm(threat, options: dict) -> PGDAttack:
    """FGSM: one step of size ε from the clean image (options as for pgdK)."""
    options = {"random_start": False, **options}
    allowed = {"step", "loss", "targeted", "random_start"}
    if set(options) - allowed:
        unknown = ", ".join(sorted(set(options) - allowed))
        raise RobevalError(f"fgsm has no option {unknown}; options: {', '.join(sorted(allowed))}")
    return PGDAttack(threat, 1, name="fgsm", **options)


def _pgd_family(match: re.Match, threat, options: dict) -> PGDAttack:
    """`pgdK` and `pgdK-smooth` for K up to `MAX_ITERATIONS`."""
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > len(str(MAX_ITERATIONS)):   # before int(): it refuses 4300+ digits
        raise RobevalError(f"pgdK: K={digits[:12]}... ({len(digits)} digits) is too large; pgdK takes "
                           f"at most {MAX_ITERATIONS:,} steps, e.g. pgd10")
    return PGDAttack.from_spec(int(digits), bool(match.group(2)), threat, options)


ATTACKS.add("fgsm", _fgsm)
add_pattern(r"^pgd(\d+)(-smooth)?$", ("pgdK", "pgdK-smooth"), _pgd_family)
