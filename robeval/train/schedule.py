"""Learning-rate and ε schedules as pure functions of training progress (in epochs).

Deriving both from the progress, rather than stepping a scheduler object, makes a resumed run
see exactly the values an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from robeval.registry import Registry

if TYPE_CHECKING:  # config validates schedule names against SCHEDULES, so it imports this module
    from robeval.train.config import OptimConfig, TrainConfig

Schedule = Callable[["OptimConfig", int, float], float]  # (optim, epochs, progress) -> LR factor
SCHEDULES: Registry[Schedule] = Registry("LR schedule", ordered=True)


@SCHEDULES.register("piecewise")
def piecewise(optim: OptimConfig, epochs: int, progress: float) -> float:
    """× gamma at every milestone passed."""
    return optim.gamma ** sum(progress >= milestone for milestone in optim.milestones)


@SCHEDULES.register("cosine")
def cosine(optim: OptimConfig, epochs: int, progress: float) -> float:
    """Half a cosine from 1 to 0 over the run."""
    return 0.5 * (1 + math.cos(math.pi * min(progress / epochs, 1.0)))


@SCHEDULES.register("onecycle")
def onecycle(optim: OptimConfig, epochs: int, progress: float) -> float:
    """Triangle: 0 → peak at 2/5 of training → 0 (Wong et al., fast adversarial training)."""
    peak = 0.4 * epochs
    return progress / peak if progress < peak else max(0.0, (epochs - progress) / (epochs - peak))


@SCHEDULES.register("constant")
def constant(optim: OptimConfig, epochs: int, progress: float) -> float:
    """The peak LR throughout."""
    return 1.0


def lr_at(config: TrainConfig, progress: float) -> float:
    """The learning rate after `progress` epochs (fractional within an epoch)."""
    optim, epochs = config.optim, config.epochs
    factor = SCHEDULES.get(optim.schedule)(optim, epochs, progress)
    if optim.warmup_epochs > 0 and progress < optim.warmup_epochs:
        factor *= progress / optim.warmup_epochs
    return config.effective_lr * factor


def eps_at(config: TrainConfig, progress: float) -> float:
    """The training ε after `progress` epochs (linear warm-up from 0 when configured)."""
    eps, warmup = config.adversary.eps, config.adversary.eps_warmup_epochs
    if warmup > 0 and progress < warmup:
        return eps * progress / warmup
    return eps
