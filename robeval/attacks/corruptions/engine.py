"""Corrupted-image accuracy on one batch: every (type, severity) of a `CorruptionSuite`.

Each condition corrupts the batch (`corrupt`) and classifies it with one forward pass of the
model the engine hands over (guarded and pass-counted), or with the majority of several passes
once the engine has found the model's outputs random. Every image is classified, whether the
clean image was right or not: corruption accuracy is plain accuracy on corrupted images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from robeval.attacks.base import margins
from robeval.attacks.corruptions.base import corrupt
from robeval.attacks.corruptions.suite import CorruptionSuite
from robeval.attacks.cost import PassCounter
from robeval.attacks.verify import majority_logits


@dataclass
class ConditionOutcome:
    """One (type, severity) on one batch: per-image predictions and margins, time and passes."""

    position: int               # index of the condition in `CorruptionSuite.conditions`
    predictions: Tensor         # int64 (N,), on the CPU
    margins: Tensor             # float (N,): logit of the label − largest other logit
    seconds: float              # corrupting and classifying
    passes: tuple[int, int]     # (forward, backward) image-passes


@torch.no_grad()
def evaluate_corruptions(model: PassCounter, suite: CorruptionSuite, images: Tensor, labels: Tensor,
                         first_index: int, seed: int, majority: bool = False) -> list[ConditionOutcome]:
    """Every condition of `suite` on the batch `images` (in [0,1]; test-set indices from
    `first_index`), classified by `model`; randomness seeded by `seed` and each image's index."""
    indices = list(range(first_index, first_index + len(labels)))
    model.take()
    outcomes = []
    for position, (name, severity) in enumerate(suite.conditions):
        started = time.perf_counter()
        corrupted = corrupt(images, name, severity, indices, seed)
        if majority:
            predicted, margin = majority_logits(model, corrupted, labels)
        else:
            logits = model(corrupted)
            predicted, margin = logits.argmax(1), margins(logits, labels)
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        outcomes.append(ConditionOutcome(position, predicted.cpu(), margin.float().cpu(),
                                         time.perf_counter() - started, model.take()))
    return outcomes
