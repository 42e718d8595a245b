"""Only verified breaks count: the engine re-checks every attack's returned examples itself.

An attack's own bookkeeping (a point is broken when any iterate was misclassified) is a claim.
`verify` turns it into a verdict robeval can vouch for:

1. the returned example is put inside the threat model (projected onto the ε-ball around the
   clean image and clipped to [0,1]; a correct attack's examples do not move);
2. a fresh forward pass classifies it: broken means misclassified now, whatever the attack
   said; the stored margin and perturbation norm are those of this example;
3. the fresh logits are compared with the ones the attack reported for the same examples. Any
   difference beyond float noise means the model's output is random (or depends on something
   other than its input), and from then on every verdict, clean and adversarial, is the
   majority of `REPEATS` passes, with the median margin stored (odd `REPEATS`: the median margin
   is negative exactly when most passes misclassify). `pgdK(eot=M)` is the attack for such
   models: it follows the gradient averaged over M passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robeval.attacks.base import AttackOutcome, ThreatModel, margins, perturbation_norms
from robeval.attacks.steps import get_norm

REPEATS = 9                  # passes whose majority decides a random model's verdicts (odd)
RANDOM_TOLERANCE = 1e-3      # logit differences above this share of the logit scale: random
RADIUS_TOLERANCE = 1e-5      # relative slack of the ε-ball before an example is projected


@dataclass
class Verified:
    """The verified outcome of one attack on one chunk, and what verifying it found."""

    outcome: AttackOutcome
    unconfirmed: int          # points the attack claimed broken that the fresh pass keeps
    projected: int            # examples outside the threat model, projected back before judging
    random: bool              # the fresh pass disagreed with the attack's: the model is random


def inside_threat(adversarial: Tensor, images: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """The examples projected into the threat model, and which of them had to move."""
    geometry = get_norm(threat.norm)
    delta = adversarial - images
    norms = geometry.norm(delta)
    outside = (norms > threat.eps * (1 + RADIUS_TOLERANCE) + 1e-7) \
        | (adversarial < 0).flatten(1).any(1) | (adversarial > 1).flatten(1).any(1)
    if not bool(outside.any()):
        return adversarial, outside
    fixed = (images + geometry.project(delta, threat.eps)).clamp(0, 1)
    return torch.where(outside.view(-1, *([1] * (images.dim() - 1))), fixed, adversarial), outside


@torch.no_grad()
def majority_logits(model: nn.Module, images: Tensor, labels: Tensor,
                    repeats: int = REPEATS) -> tuple[Tensor, Tensor]:
    """(majority prediction, median margin) over `repeats` passes of a random model."""
    runs = [model(images) for _ in range(repeats)]
    predictions = torch.stack([logits.argmax(1) for logits in runs])
    median_margin = torch.stack([margins(logits, labels) for logits in runs]).median(0).values
    correct = (predictions == labels).sum(0) * 2 > repeats
    # the majority prediction: the label when most passes get it right, else the most frequent
    # wrong class
    votes = torch.nn.functional.one_hot(predictions, runs[0].shape[1]).sum(0)
    votes.scatter_(1, labels[:, None], -1)
    predicted = torch.where(correct, labels, votes.argmax(1))
    return predicted, median_margin


def random_outputs(fresh: Tensor, reported: Tensor) -> bool:
    """Whether two margins of the same examples differ beyond float noise."""
    scale = max(1.0, float(fresh.abs().max())) if len(fresh) else 1.0
    return bool(((fresh - reported).abs() > RANDOM_TOLERANCE * scale).any())


@torch.no_grad()
def verify(model: nn.Module, outcome: AttackOutcome, images: Tensor, labels: Tensor,
           threat: ThreatModel, majority: bool) -> Verified:
    """The attack's outcome as the engine vouches for it (see the module doc)."""
    if outcome.adversarial is None or len(images) == 0:
        raise ValueError("an attack must return its adversarial examples to be verified")
    adversarial, moved = inside_threat(outcome.adversarial.to(images.device), images, threat)
    margin = margins(model(adversarial), labels)
    random = False
    if not majority:
        reported = outcome.margin.to(margin.device)
        random = random_outputs(margin[~moved], reported[~moved])
    if majority or random:
        _, margin = majority_logits(model, adversarial, labels)
    robust = (margin > 0).cpu()
    claimed_broken = ~outcome.robust.cpu()
    verified = AttackOutcome(robust=robust, margin=margin.float().cpu(),
                             perturbation_norm=perturbation_norms(adversarial, images, threat.norm).cpu(),
                             iterations=outcome.iterations, adversarial=adversarial, notes=outcome.notes)
    return Verified(verified, int((claimed_broken & robust).sum()), int(moved.sum()), random)
