"""Optimisers of the outer minimisation by name; the trainer sets their LR every step."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from robeval.registry import Registry

if TYPE_CHECKING:  # config validates optimiser names against OPTIMIZERS, so it imports this module
    from robeval.train.config import TrainConfig

OptimizerFactory = Callable[[Iterable[nn.Parameter], "TrainConfig"], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", ordered=True)


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the configured momentum, Nesterov flag and weight decay."""
    optim = config.optim
    return torch.optim.SGD(params, lr=config.effective_lr, momentum=optim.momentum,
                           nesterov=optim.nesterov, weight_decay=optim.weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with L2 weight decay."""
    return torch.optim.Adam(params, lr=config.effective_lr, weight_decay=config.optim.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=config.effective_lr, weight_decay=config.optim.weight_decay)
