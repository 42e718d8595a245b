"""Training methods: each turns a batch into a loss and the logits it saw.

standard (clean CE), fgsm and pgd (CE on x + δ), trades (CE + β·KL), igr (CE + λ‖∇ₓL‖₁ by
double backprop). Methods run inside the optimiser gradient phase (set by the trainer);
examples are crafted with BatchNorm in the configured mode and the surrogate-gradient ReLUs in
their attacker phase; the loss is computed in training mode.

The accuracy figures a method returns are measured in training mode (BatchNorm on batch
statistics), clean and adversarial alike, so the two can be compared; the clean accuracy of
the crafting pass, whose BatchNorm mode is the configured one, is returned apart. A method asked
not to `measure_clean` may skip a forward pass it would make only for the clean figure
(returning None for it); one that gets the figure for free returns it anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robeval.activations import ATTACKER, gradient_phase
from robeval.attacks.pgd import perturb
from robeval.distributed import unwrap
from robeval.registry import Registry

if TYPE_CHECKING:  # config validates method names against METHODS, so it imports this module
    from robeval.train.config import AdversaryConfig


@dataclass
class StepOutput:
    """The loss to minimise and the logits behind the accuracy figures (None: not measured).

    `clean_logits` and `adv_logits` come from training-mode forward passes; `craft_logits`
    from the crafting pass on the clean images (BatchNorm as configured for crafting).
    """

    loss: Tensor
    clean_logits: Tensor | None
    adv_logits: Tensor | None
    craft_logits: Tensor | None = None


Criterion = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> mean loss
# (model, images, labels, adversary, eps, criterion, measure_clean) -> StepOutput
Method = Callable[..., StepOutput]
METHODS: Registry[Method] = Registry("training method", ordered=True)


@contextmanager
def crafting(model: nn.Module, bn_mode: str):
    """BatchNorm in `bn_mode` and smooth-gradient attacker phase while examples are crafted.

    Yields the network to attack: inside a DistributedDataParallel wrapper, the wrapped
    module, because the attacker's input gradients must not start a gradient all-reduce.
    """
    attacker = unwrap(model)
    attacker.train(bn_mode == "train")
    try:
        with gradient_phase(attacker, ATTACKER):
            yield attacker
    finally:
        attacker.train()


@contextmanager
def batchnorm_stats_kept(model: nn.Module):
    """BatchNorm running statistics restored on exit, so a measuring pass leaves no trace."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[(buffer, buffer.clone()) for buffer in m.buffers(recurse=False)] for m in norms]
    try:
        yield
    finally:
        for pairs in saved:
            for buffer, value in pairs:
                buffer.copy_(value)


@torch.no_grad()
def train_mode_logits(model: nn.Module, images: Tensor) -> Tensor:
    """Logits of `images` in training mode (batch statistics), running statistics untouched."""
    network = unwrap(model)
    with batchnorm_stats_kept(network):
        return network(images)


def step_size_for(adv: AdversaryConfig, steps: int) -> float | None:
    """The configured step, or FGSM's 1.25ε with random start (Wong et al.); None: default."""
    if adv.step_size is not None:
        return adv.step_size
    if adv.method == "fgsm" and adv.random_start:
        return 1.25 * adv.eps
    return None


@METHODS.register("standard")
def standard(model, images, labels, adv, eps, criterion, measure_clean=True) -> StepOutput:
    """Clean training."""
    logits = model(images)
    return StepOutput(criterion(logits, labels), logits.detach(), None)


def _adversarial(model, images, labels, adv, eps, criterion, steps: int,
                 measure_clean: bool) -> StepOutput:
    with crafting(model, adv.bn_mode) as attacker:
        step = step_size_for(adv, steps)
        if step is not None and adv.eps > 0:
            step *= eps / adv.eps  # follow the ε warm-up
        adv_images, first_logits = perturb(attacker, images, labels, eps, steps, step,
                                           adv.norm, adv.random_start)
    craft = None if adv.random_start else first_logits.detach()
    if craft is not None and adv.bn_mode == "train":
        clean = craft   # the crafting pass already ran the clean batch in training mode
    elif measure_clean:
        # One extra forward without gradient: clean accuracy in the BatchNorm mode of the
        # adversarial figure (the crafting pass may run BatchNorm on its running statistics).
        # It comes first: restoring the running statistics afterwards would be an in-place
        # change to tensors the training forward saves for backward.
        clean = train_mode_logits(model, images)
    else:
        clean = None
    logits = model(adv_images)
    loss = criterion(logits, labels)
    return StepOutput(loss, clean, logits.detach(), craft)


@METHODS.register("fgsm")
def fgsm(model, images, labels, adv, eps, criterion, measure_clean=True) -> StepOutput:
    """FGSM training: one signed-gradient step (optionally from a random start)."""
    return _adversarial(model, images, labels, adv, eps, criterion, 1, measure_clean)


@METHODS.register("pgd")
def pgd(model, images, labels, adv, eps, criterion, measure_clean=True) -> StepOutput:
    """PGD-K training (K = adv.steps; PGD-1 with step ε is the SAT recipe)."""
    return _adversarial(model, images, labels, adv, eps, criterion, adv.steps, measure_clean)


def _kl_to(clean_probs: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    def per_sample_kl(logits: Tensor, _labels: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(logits, 1), clean_probs, reduction="none").sum(1)

    return per_sample_kl


@METHODS.register("trades")
def trades(model, images, labels, adv, eps, criterion, measure_clean=True) -> StepOutput:
    """TRADES (Zhang et al.): CE(f(x)) + β·KL(f(x) ‖ f(x')), x' maximising the KL term."""
    with crafting(model, adv.bn_mode) as attacker:
        with torch.no_grad():
            clean_probs = F.softmax(attacker(images), 1)
        adv_images, _ = perturb(attacker, images, labels, eps, adv.steps, adv.step_size, adv.norm,
                                loss_fn=_kl_to(clean_probs),
                                init=0.001 * torch.randn_like(images))
    clean_logits, adv_logits = model(images), model(adv_images)
    kl = F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(clean_logits, 1),
                  reduction="batchmean")
    loss = criterion(clean_logits, labels) + adv.trades_beta * kl
    return StepOutput(loss, clean_logits.detach(), adv_logits.detach())


@METHODS.register("igr")
def igr(model, images, labels, adv, eps, criterion, measure_clean=True) -> StepOutput:
    """Input-gradient regularisation: CE + λ·mean‖∇ₓ CE‖₁, λ = ε by default."""
    weight = eps if adv.igr_lambda is None else adv.igr_lambda
    images = images.clone().requires_grad_(True)
    logits = model(images)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    (grad,) = torch.autograd.grad(per_sample.sum(), images, create_graph=True)
    loss = criterion(logits, labels) + weight * grad.abs().flatten(1).sum(1).mean()
    return StepOutput(loss, logits.detach(), None)
