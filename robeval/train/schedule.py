"""Learning-rate and ε schedules as pure functions of training progress (in epochs).

Deriving both from the progress, rather than stepping a scheduler object, makes a resumed run
see exactly the values an uninterrupted one would.
"""

from __future__ import annotations

import math

from robeval.train.config import TrainConfig


def lr_at(config: TrainConfig, progress: float) -> float:
    """The learning rate after `progress` epochs (fractional within an epoch)."""
    optim, epochs = config.optim, config.epochs
    if optim.schedule == "piecewise":
        factor = optim.gamma ** sum(progress >= milestone for milestone in optim.milestones)
    elif optim.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(progress / epochs, 1.0)))
    elif optim.schedule == "onecycle":
        # Triangle: 0 → peak at 2/5 of training → 0 (Wong et al., fast adversarial training).
        peak = 0.4 * epochs
        factor = progress / peak if progress < peak else max(0.0, (epochs - progress) / (epochs - peak))
    else:
        factor = 1.0
    if optim.warmup_epochs > 0 and progress < optim.warmup_epochs:
        factor *= progress / optim.warmup_epochs
    return config.effective_lr * factor


def eps_at(config: TrainConfig, progress: float) -> float:
    """The training ε after `progress` epochs (linear warm-up from 0 when configured)."""
    eps, warmup = config.adversary.eps, config.adversary.eps_warmup_epochs
    if warmup > 0 and progress < warmup:
        return eps * progress / warmup
    return eps
