"""Auto-PGD (Croce & Hein, ICML 2020) with per-sample early exit, and MALT target selection.

APGD runs `iters` gradient steps from a random start with per-sample step sizes: every point
starts at step 2ε; at the checkpoints (the first after 22% of the iterations, then windows that
shrink by 3% of the iterations down to 6%) a point's step is halved, and the point moved back
to its best iterate so far, when the loss went up in at most ρ=0.75 of the window's steps, or
when the step was not halved at the last checkpoint and the best loss has not improved since.
Steps carry momentum 0.75. The losses are cross-entropy (`apgd-ce`), DLR (`apgd-dlr`) and the
targeted DLR, (z_t − z_y) / (z_π1 − (z_π3 + z_π4)/2), against one target class at a time
(`apgd-t`); L∞ and L2. The start is pyautoattack's: a uniform draw scaled so that its largest
entry is ε (L∞), or a Gaussian draw scaled to norm ε (L2).

Early exit: a point leaves the batch at its first misclassified iterate (its outcome is
decided: broken), so only points still standing cost compute. All state is per sample, the
checkpoint schedule depends on the iteration alone, and each start is drawn for the whole
batch before it is indexed, so a point's trajectory is the one it would have had alone.
`iterations` counts, per point, the iterates evaluated (restarts and targets summed).

Targets of `apgd-t`: `select=logits` (AutoAttack's choice) attacks the classes with the highest
clean logits; `select=malt` ranks them by MALT's normalised linear score (Melamed et al.,
NeurIPS 2024), (z_y − z_c) / ‖∇ₓ(z_y − z_c)‖_*, with the dual norm of the threat model (ℓ1
for L∞, ℓ2 for L2): for a linear model it is exactly the distance to the boundary between y and
c, and the smallest score is the most promising target. The score needs one backward pass per
candidate class; candidates are the `MALT_CANDIDATES` classes with the highest other logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robeval.attacks.base import ATTACKS, AttackOutcome, ThreatModel, evaluate_examples
from robeval.attacks.losses import cross_entropy, dlr, dlr_targeted
from robeval.attacks.steps import NORMS, get_norm
from robeval.errors import RobevalError
from robeval.spec import format_spec, positive_option

MOMENTUM = 0.75          # weight of the new step against the last move (α in the paper)
RHO = 0.75               # a window whose loss rose in at most ρ of its steps halves the step
MALT_CANDIDATES = 20     # classes whose MALT score is computed (the highest other logits)
SELECTIONS = ("logits", "malt")
LOSSES = {"ce": cross_entropy, "dlr": dlr, "dlr-targeted": dlr_targeted}


def checkpoints(iters: int) -> dict[int, int]:
    """Iteration index (0-based) of each checkpoint → the length of the window it closes."""
    window = max(int(0.22 * iters), 1)
    shrink, minimum = max(int(0.03 * iters), 1), max(int(0.06 * iters), 1)
    points, at = {}, -1
    while at + window < iters:
        at += window
        points[at] = window
        window = max(window - shrink, minimum)
    return points


def random_start(shape: torch.Size, eps: float, norm: str, like: Tensor) -> Tensor:
    """APGD's starting perturbation for a whole batch (see the module doc)."""
    return get_norm(norm).scaled_start(shape, eps, like)


@dataclass
class RunResult:
    """One APGD run on a batch: who was broken, where, after how many iterates."""

    broken: Tensor       # bool (N,)
    adversarial: Tensor  # the misclassified iterate for broken points, the best one otherwise
    iterations: Tensor   # long (N,): iterates evaluated
    predicted: Tensor    # bool (classes,): the classes the misclassified iterates were given


class _Points:
    """The per-sample state of the points still standing; `keep` drops the others everywhere."""

    def __init__(self, **tensors: Tensor | None):
        self.__dict__.update(tensors)
        self._names = list(tensors)

    def keep(self, mask: Tensor) -> None:
        """Keep the points where `mask` is True (dimension 1 of the loss history)."""
        for name in self._names:
            value = getattr(self, name)
            if value is None:
                continue
            setattr(self, name, value[:, mask] if name == "history" else value[mask])

    def __len__(self) -> int:
        return len(self.index)


def _loss_and_grad(model: nn.Module, loss_fn, x: Tensor, delta: Tensor, labels: Tensor,
                   targets: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-sample loss and its input gradient at x + δ (one forward, one backward)."""
    point = (x + delta).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(point)
        loss = loss_fn(logits, labels) if targets is None else loss_fn(logits, labels, targets)
        (grad,) = torch.autograd.grad(loss.sum(), point)
    return logits.detach(), loss.detach(), grad.detach()


def apgd_run(model: nn.Module, images: Tensor, labels: Tensor, start: Tensor, *, eps: float,
             norm: str, iters: int, loss: str = "ce", targets: Tensor | None = None) -> RunResult:
    """One APGD run from `start` (a perturbation per point) with per-sample early exit."""
    geometry, loss_fn = get_norm(norm), LOSSES[loss]
    n = len(images)
    broken = torch.zeros(n, dtype=torch.bool, device=images.device)
    iterations = torch.zeros(n, dtype=torch.long, device=images.device)
    adversarial = images.clone()
    delta = (images + geometry.project(start, eps)).clamp(0, 1) - images
    logits, value, grad = _loss_and_grad(model, loss_fn, images, delta, labels, targets)
    predicted = torch.zeros(logits.shape[1], dtype=torch.bool, device=images.device)
    points = _Points(index=torch.arange(n, device=images.device), x=images, y=labels, t=targets,
                     delta=delta, prev=delta, grad=grad,
                     step=torch.full((n,), 2.0 * eps, device=images.device, dtype=images.dtype),
                     best=delta, best_loss=value, best_grad=grad,
                     history=value.new_zeros(iters + 1, n), last_best=value, reduced=value.new_ones(n).bool())
    points.history[0] = value
    schedule = checkpoints(iters)
    for i in range(iters + 1):
        wrong = logits.argmax(1) != points.y
        if wrong.any():
            hit = points.index[wrong]
            broken[hit], adversarial[hit] = True, (points.x + points.delta)[wrong]
            predicted[logits[wrong].argmax(1)] = True
            points.keep(~wrong)
            logits, value = logits[~wrong], value[~wrong]
        if len(points) == 0 or i == iters:
            break
        _track_best(points, value, i)
        if i - 1 in schedule:
            _checkpoint(points, i - 1, schedule[i - 1])
        _step(points, geometry, eps, momentum=1.0 if i == 0 else MOMENTUM)
        logits, value, points.grad = _loss_and_grad(model, loss_fn, points.x, points.delta,
                                                    points.y, points.t)
        iterations[points.index] += 1
    if len(points):
        _track_best(points, value, iters)
        adversarial[points.index] = points.x + points.best
    return RunResult(broken, adversarial, iterations, predicted)


def _track_best(points: _Points, value: Tensor, i: int) -> None:
    """Record the loss of iterate i and keep the best iterate (and its gradient) so far."""
    if i == 0:
        return
    points.history[i] = value
    better = value > points.best_loss
    points.best = torch.where(_expand(better, points.delta), points.delta, points.best)
    points.best_grad = torch.where(_expand(better, points.grad), points.grad, points.best_grad)
    points.best_loss = torch.where(better, value, points.best_loss)


def _checkpoint(points: _Points, at: int, window: int) -> None:
    """Halve the step of the points that oscillate or stalled, and move them to their best."""
    recent = points.history[at + 1 - window:at + 2]
    rises = (recent[1:] > recent[:-1]).sum(0)
    oscillating = rises <= window * RHO
    stalled = ~points.reduced & (points.last_best >= points.best_loss)
    halve = oscillating | stalled
    points.reduced, points.last_best = halve, points.best_loss.clone()
    points.step = torch.where(halve, points.step / 2, points.step)
    points.delta = torch.where(_expand(halve, points.delta), points.best, points.delta)
    points.grad = torch.where(_expand(halve, points.grad), points.best_grad, points.grad)


def _step(points: _Points, geometry, eps: float, momentum: float) -> None:
    """z = P(δ + η·step(∇)); δ' = P(δ + α(z − δ) + (1 − α)(δ − δ_prev)), inside [0,1]."""
    x, delta, step = points.x, points.delta, _expand(points.step, points.delta)
    z = geometry.project(geometry.step(delta, points.grad, step), eps)
    z = (x + z).clamp(0, 1) - x
    moved = delta + momentum * (z - delta) + (1 - momentum) * (delta - points.prev)
    moved = geometry.project(moved, eps)
    points.prev, points.delta = delta, (x + moved).clamp(0, 1) - x


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """A per-sample tensor shaped to broadcast against a batch of images."""
    return values.view(-1, *([1] * (like.dim() - 1)))


# --- target selection ------------------------------------------------------------------------

def logit_targets(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """The k classes other than the label with the highest logits, best first: (N, k)."""
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return others.topk(k, dim=1).indices


def malt_scores(model: nn.Module, images: Tensor, labels: Tensor, norm: str,
                candidates: int = MALT_CANDIDATES) -> Tensor:
    """MALT's normalised linear score per class, (N, C); +inf for the label and non-candidates."""
    point = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(point)
        chosen = logit_targets(logits.detach(), labels, min(candidates, logits.shape[1] - 1))
        scores = torch.full(logits.shape, float("inf"), device=images.device)
        rows = torch.arange(len(images), device=images.device)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        for j in range(chosen.shape[1]):
            gap = true - logits.gather(1, chosen[:, j:j + 1]).squeeze(1)
            (grad,) = torch.autograd.grad(gap.sum(), point, retain_graph=j + 1 < chosen.shape[1])
            dual = get_norm(norm).dual_norm(grad)
            scores[rows, chosen[:, j]] = (gap.detach() / dual.clamp_min(1e-12)).float()
    return scores


def malt_targets(model: nn.Module, images: Tensor, labels: Tensor, norm: str, k: int,
                 live: Tensor | None = None) -> Tensor:
    """The k most promising target classes by MALT's score, best (smallest) first: (N, k).

    With `live` (bool per class), the classes the model predicts somewhere come first and the
    others only fill what is left of the k: a class that never wins cannot be reached by a
    targeted attack, however small its score (see docs/design.md, "Targets that cannot be
    decoyed").
    """
    scores = malt_scores(model, images, labels, norm, max(k, MALT_CANDIDATES))
    order = scores.argsort(dim=1, stable=True)
    if live is not None:  # live candidates, then the other candidates, then the label and the rest
        rank = (~live.to(order.device))[order].to(torch.uint8) + 2 * scores.gather(1, order).isinf()
        order = order.gather(1, rank.argsort(dim=1, stable=True))
    return order[:, :k]


# --- the attack ------------------------------------------------------------------------------

class APGDAttack:
    """`apgd-ce`, `apgd-dlr` and `apgd-t` (see the module doc): restarts, targets, early exit."""

    def __init__(self, name: str, threat: ThreatModel, loss: str, iters: int = 100, restarts: int = 1,
                 targets: int | None = None, select: str = "logits"):
        self.name, self.loss = name, loss
        self.eps, self.norm = threat.eps, NORMS.resolve(threat.norm)
        self.iters, self.restarts = iters, restarts
        self.targets, self.select = targets, select
        options = {"iters": iters, "restarts": restarts, "targets": targets, "select": select}
        defaults = {"iters": 100, "restarts": 1, "targets": 9, "select": "logits"}
        self.spec = format_spec(name, {key: value for key, value in options.items()
                                       if value is not None and value != defaults[key]})

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int,
            live_classes: Tensor | None = None) -> AttackOutcome:
        """Attack a batch; returns per-sample outcomes (see `AttackOutcome`).

        `live_classes` (bool, one per class) marks the classes the model is known to predict
        somewhere (e.g. on the rest of the batch); MALT chooses its targets among those and the
        classes predicted on `images` first (see `malt_targets`). The notes record the classes
        predicted on the clean images and on the examples that broke points (`predicted`).
        """
        with torch.random.fork_rng(devices=_cuda_devices(images), device_type=images.device.type):
            torch.manual_seed(seed)
            broken, adversarial, iterations, predicted = self._attack(model, images, labels, live_classes)
        outcome = evaluate_examples(model, adversarial, images, labels, self.norm, iterations.cpu())
        outcome.notes = {"predicted": predicted.cpu()}
        return outcome

    def _attack(self, model: nn.Module, images: Tensor, labels: Tensor, live_classes: Tensor | None):
        with torch.no_grad():
            logits = model(images)
        broken = logits.argmax(1) != labels
        predicted = class_mask(logits.argmax(1), logits.shape[1])
        if live_classes is not None:
            predicted = predicted | live_classes.to(predicted.device)
        adversarial = images.clone()
        iterations = torch.zeros(len(images), dtype=torch.long, device=images.device)
        for targets in self._target_columns(model, images, labels, logits, predicted):
            for _ in range(self.restarts):
                start = random_start(images.shape, self.eps, self.norm, images)
                active = (~broken).nonzero().flatten()
                if len(active) == 0:
                    return broken, adversarial, iterations, predicted
                result = apgd_run(model, images[active], labels[active], start[active], eps=self.eps,
                                  norm=self.norm, iters=self.iters, loss=self.loss,
                                  targets=None if targets is None else targets[active])
                broken[active], adversarial[active] = result.broken, result.adversarial
                iterations[active] += result.iterations
                predicted |= result.predicted
        return broken, adversarial, iterations, predicted

    def _target_columns(self, model: nn.Module, images: Tensor, labels: Tensor, logits: Tensor,
                        live: Tensor):
        """None for the untargeted losses, else one target per point for each run, best first."""
        if self.targets is None:
            return [None]
        k = min(self.targets, logits.shape[1] - 1)
        if self.select == "malt":
            order = malt_targets(model, images, labels, self.norm, k, live=live)
        else:
            order = logit_targets(logits, labels, k)
        return list(order.T)


def class_mask(predictions: Tensor, classes: int) -> Tensor:
    """A bool mask over `classes` of the classes that occur in `predictions`."""
    mask = torch.zeros(classes, dtype=torch.bool, device=predictions.device)
    mask[predictions] = True
    return mask


def _cuda_devices(images: Tensor) -> list[int]:
    return [images.device.index or 0] if images.device.type == "cuda" else []


def build(name: str, loss: str, threat: ThreatModel, options: dict) -> APGDAttack:
    """An APGD attack from its spec options, with one-line errors for bad ones."""
    allowed = ["iters", "restarts"] + (["targets", "select"] if loss == "dlr-targeted" else [])
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise RobevalError(f"{name} has no option {', '.join(unknown)}; options: {', '.join(allowed)} "
                           f"(pyautoattack's version: pyautoattack-{name})")
    if threat.norm not in NORMS:
        raise RobevalError(f"{name} supports the norms {', '.join(NORMS.names())}, not {threat.norm!r}")
    values = {key: positive_option(name, key, value) for key, value in options.items() if key != "select"}
    select = str(options.get("select", "logits")).lower()
    if select not in SELECTIONS:
        raise RobevalError(f"{name}: select={select} is unknown; choose {' or '.join(SELECTIONS)}")
    if loss == "dlr-targeted":
        values.setdefault("targets", 9)
        return APGDAttack(name, threat, loss, select=select, **values)
    return APGDAttack(name, threat, loss, **values)


def _register() -> None:
    for name, loss in (("apgd-ce", "ce"), ("apgd-dlr", "dlr"), ("apgd-t", "dlr-targeted")):
        ATTACKS.add(name, lambda threat, options, name=name, loss=loss: build(name, loss, threat, options))


_register()
