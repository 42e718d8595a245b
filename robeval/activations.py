"""Activation registry: each entry has its module, closed-form first derivative and C¹ property.

Also the surrogate-gradient ReLU of SAT §3: ReLU in the forward pass, the derivative of the
parametric Softplus in the backward pass, switched on separately for the attacker's input
gradient and for the optimiser's parameter gradient (the four rows of SAT Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robeval.activation_kernels import CELU, ELU, Softplus, smooth_relu, softplus
from robeval.errors import RobevalError
from robeval.registry import Registry
from robeval.spec import format_spec, parse_spec

# --- modules without a torch builtin -------------------------------------------------------

class ParametricSoftplus(nn.Module):
    """f(α, x) = log(1 + exp(αx)) / α (SAT eq. 2); α=10 is the paper's choice."""

    def __init__(self, alpha: float = 10.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return softplus(x, beta=self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class SmoothReLU(nn.Module):
    """f(x) = x − log(αx + 1)/α for x ≥ 0, else 0 (SAT eq. 3), with a learnable α > 0.

    α is shared by all channels and kept positive by learning log α; it starts at 400.
    """

    def __init__(self, alpha: float = 400.0):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    def forward(self, x: Tensor) -> Tensor:
        return smooth_relu(x, self.alpha)


class _SurrogateReLUFunction(torch.autograd.Function):
    """ReLU forward; backward multiplies by sigmoid(αx), the parametric-Softplus derivative."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        # Written with differentiable ops so double backprop (IGR) works through it.
        return grad_output * torch.sigmoid(ctx.alpha * x), None


ATTACKER, OPTIMIZER, EXACT = "attacker", "optimizer", "exact"
PHASES = (ATTACKER, OPTIMIZER, EXACT)


class SurrogateReLU(nn.Module):
    """ReLU whose gradient is optionally the parametric Softplus one, per gradient phase.

    `smooth_attacker` applies while adversarial examples are crafted (input gradient),
    `smooth_optimizer` while the training loss is backpropagated to the weights; the phase is
    set for a whole model with `gradient_phase`. Outside both phases (evaluation) the gradient
    is ReLU's own, so attacks on the trained model see the true network.
    """

    def __init__(self, alpha: float = 10.0, smooth_attacker: bool = False,
                 smooth_optimizer: bool = False):
        super().__init__()
        self.alpha = float(alpha)
        self.smooth_attacker = bool(smooth_attacker)
        self.smooth_optimizer = bool(smooth_optimizer)
        self.phase = EXACT

    def forward(self, x: Tensor) -> Tensor:
        smooth = ((self.phase == ATTACKER and self.smooth_attacker)
                  or (self.phase == OPTIMIZER and self.smooth_optimizer))
        if smooth and torch.is_grad_enabled():
            return _SurrogateReLUFunction.apply(x, self.alpha)
        return F.relu(x)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, smooth_attacker={self.smooth_attacker}, "
                f"smooth_optimizer={self.smooth_optimizer}")


@contextmanager
def gradient_phase(model: nn.Module, phase: str) -> Iterator[None]:
    """Mark every SurrogateReLU in `model` as computing `phase` (attacker, optimizer or exact)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
    surrogates = [m for m in model.modules() if isinstance(m, SurrogateReLU)]
    previous = [m.phase for m in surrogates]
    for module in surrogates:
        module.phase = phase
    try:
        yield
    finally:
        for module, old in zip(surrogates, previous, strict=True):
            module.phase = old


@contextmanager
def smooth_relu_gradients(model: nn.Module, alpha: float = 10.0) -> Iterator[None]:
    """Within the block, every ReLU of `model` back-propagates as parametric Softplus (SAT §3.2).

    The forward pass is unchanged; modules are swapped in place and restored afterwards. Works
    on any model whose ReLUs are `nn.ReLU` or `SurrogateReLU` modules.
    """
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) in (nn.ReLU, SurrogateReLU):
                surrogate = SurrogateReLU(alpha, smooth_attacker=True)
                surrogate.phase = ATTACKER
                setattr(parent, name, surrogate)
                swapped.append((parent, name, child))
    if not swapped:
        raise RobevalError("smooth-gradient attacks need a model with ReLU modules (nn.ReLU); "
                           "this model has none")
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


SMOOTH_GRAD_MODES = {
    "none": (False, False),
    "attacker": (True, False),
    "optimizer": (False, True),
    "both": (True, True),
}


def surrogate_relu(smooth_grad: str, alpha: float = 10.0) -> Callable[[], nn.Module]:
    """Factory of SurrogateReLU modules for one SAT Table 1 row (`none|attacker|optimizer|both`)."""
    if smooth_grad not in SMOOTH_GRAD_MODES:
        known = ", ".join(SMOOTH_GRAD_MODES)
        raise RobevalError(f"unknown smooth-grad mode {smooth_grad!r}; known: {known}")
    attacker, optimizer = SMOOTH_GRAD_MODES[smooth_grad]
    return lambda: SurrogateReLU(alpha, smooth_attacker=attacker, smooth_optimizer=optimizer)


# --- closed-form derivatives (for plots and tests) -----------------------------------------

def _normal_pdf(x: Tensor) -> Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _step(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


# --- the registry --------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    """One registered activation: how to build it, its derivative, and whether it is C¹."""

    name: str
    build: Callable[..., nn.Module]                 # build(**params) -> module
    derivative: Callable[..., Tensor]               # derivative(x, **params) -> f'(x)
    c1: Callable[..., bool]                         # c1(**params) -> is f continuously differentiable
    defaults: dict = field(default_factory=dict)    # parameters and their defaults
    formula: str = ""
    positive: tuple[str, ...] = ()                  # parameters that must be > 0

    def params(self, **overrides) -> dict:
        """Default parameters updated with `overrides`; unknown names are an error."""
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            allowed = ", ".join(self.defaults) or "none"
            raise RobevalError(
                f"activation {self.name!r} has no parameter {', '.join(sorted(unknown))}; "
                f"parameters: {allowed}"
            )
        for key, value in overrides.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RobevalError(
                    f"activation {self.name!r}: {key}={value!r} is not a number (e.g. {key}=0.5)"
                )
            if key in self.positive and not value > 0:
                raise RobevalError(f"activation {self.name!r}: {key} must be > 0, got {value}")
        return {**self.defaults, **overrides}

    def module(self, **params) -> nn.Module:
        """A new module with the given parameters."""
        return self.build(**self.params(**params))

    def grad(self, x: Tensor, **params) -> Tensor:
        """The closed-form first derivative at `x`."""
        return self.derivative(x, **self.params(**params))

    def is_c1(self, **params) -> bool:
        """Whether the activation with these parameters is continuously differentiable."""
        return self.c1(**self.params(**params))


ACTIVATIONS: Registry[Activation] = Registry("activation")


def _register(name, build, derivative, c1, defaults=None, formula="", aliases=(), positive=()):
    entry = Activation(name, build, derivative, c1 if callable(c1) else (lambda **_: c1),
                       defaults or {}, formula, tuple(positive))
    ACTIVATIONS.add(name, entry, aliases)


_register("relu", lambda: nn.ReLU(), lambda x: _step(x), False, formula="max(0, x)")
_register("softplus", lambda: Softplus(), lambda x: torch.sigmoid(x), True,
          formula="log(1 + exp(x))")
_register("parametric-softplus", lambda alpha: ParametricSoftplus(alpha),
          lambda x, alpha: torch.sigmoid(alpha * x), True, {"alpha": 10.0},
          "log(1 + exp(αx)) / α", aliases=("psoftplus", "softplus-alpha"), positive=("alpha",))
_register("silu", lambda: nn.SiLU(),
          lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))), True,
          formula="x · sigmoid(x)", aliases=("swish",))
_register("gelu", lambda: nn.GELU(), lambda x: _normal_cdf(x) + x * _normal_pdf(x), True,
          formula="x · Φ(x)")
_register("elu", lambda alpha: ELU(alpha),
          lambda x, alpha: torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x)),
          lambda alpha: alpha == 1.0, {"alpha": 1.0}, "x if x > 0 else α(exp(x) − 1)")
_register("celu", lambda alpha: CELU(alpha),
          lambda x, alpha: torch.where(x > 0, torch.ones_like(x), torch.exp(x / alpha)),
          True, {"alpha": 1.0}, "x if x > 0 else α(exp(x/α) − 1)", positive=("alpha",))
_register("smoothrelu", lambda alpha: SmoothReLU(alpha),
          lambda x, alpha: torch.where(x >= 0, alpha * x / (alpha * x + 1), torch.zeros_like(x)),
          True, {"alpha": 400.0}, "x − log(αx + 1)/α if x ≥ 0 else 0",
          aliases=("smooth-relu",), positive=("alpha",))
_register("prelu", lambda init: nn.PReLU(init=init),
          lambda x, init: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, init)),
          False, {"init": 0.25}, "x if x > 0 else a·x (a learnable)")
_register("leakyrelu", lambda negative_slope: nn.LeakyReLU(negative_slope),
          lambda x, negative_slope: torch.where(x > 0, torch.ones_like(x),
                                                torch.full_like(x, negative_slope)),
          False, {"negative_slope": 0.01}, "x if x > 0 else s·x", aliases=("leaky-relu",))
_register("tanh", lambda: nn.Tanh(), lambda x: 1 - torch.tanh(x) ** 2, True, formula="tanh(x)")
_register("selu", lambda: nn.SELU(),
          lambda x: 1.0507009873554805 * torch.where(
              x > 0, torch.ones_like(x), 1.6732632423543772 * torch.exp(x)),
          False, formula="λ(x if x > 0 else α(exp(x) − 1))")


def get_activation(spec: str) -> tuple[Activation, dict]:
    """Parse `name` or `name(key=value)` into its registry entry and full parameters."""
    name, options = parse_spec(spec)
    entry = ACTIVATIONS.get(name)
    return entry, entry.params(**options)


def activation_factory(spec: str, smooth_grad: str = "none") -> Callable[[], nn.Module]:
    """A zero-argument factory of activation modules for model builders.

    `smooth_grad` other than "none" turns ReLU into the surrogate-gradient ReLU of SAT Table 1;
    it only makes sense for ReLU networks.
    """
    entry, params = get_activation(spec)
    if smooth_grad != "none":
        if entry.name != "relu":
            raise RobevalError(
                f"--smooth-grad {smooth_grad} needs --activation relu (got {spec!r}): smooth "
                "gradients replace ReLU's backward pass only"
            )
        return surrogate_relu(smooth_grad)
    return lambda: entry.module(**params)


def canonical_activation(spec: str) -> str:
    """The activation spec written with its registered name and all parameters."""
    entry, params = get_activation(spec)
    return format_spec(entry.name, params)
