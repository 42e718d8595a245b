"""The activation registry and the surrogate-gradient ReLU of Smooth Adversarial Training.

Every registered activation is checked against its closed-form derivative (autograd and finite
differences), against the formulas of the SAT paper, and for the C¹ property that SAT is about.
The surrogate ReLU is checked row by row against SAT Table 1: ReLU forward, and the parametric
Softplus derivative sigmoid(αx) backward only in the gradient phases that the mode smooths.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robeval.activations import (
    ACTIVATIONS,
    PHASES,
    SMOOTH_GRAD_MODES,
    ParametricSoftplus,
    SmoothReLU,
    SurrogateReLU,
    activation_factory,
    canonical_activation,
    get_activation,
    gradient_phase,
    surrogate_relu,
)
from robeval.errors import RobevalError, UnknownNameError
from robeval.spec import parse_number

DTYPE = torch.float64

# 160 evenly spaced points on [-4, 4]: symmetric, so none is closer than 0.025 to the kink at 0.
GRID = torch.linspace(-4.0, 4.0, 160, dtype=DTYPE)

VARIANTS = [(name, {}) for name in ACTIVATIONS.names()] + [
    ("elu", {"alpha": 0.5}),
    ("elu", {"alpha": 2.0}),
    ("celu", {"alpha": 0.5}),
    ("celu", {"alpha": 2.0}),
    ("parametric-softplus", {"alpha": 3.0}),
    ("smoothrelu", {"alpha": 5.0}),
    ("leakyrelu", {"negative_slope": 0.2}),
    ("prelu", {"init": 0.1}),
]
VARIANT_IDS = [f"{name}{params or ''}" for name, params in VARIANTS]

# Whether each activation (with default parameters) is continuously differentiable.
EXPECTED_C1 = {
    "relu": False, "prelu": False, "leakyrelu": False, "selu": False,
    "softplus": True, "parametric-softplus": True, "silu": True, "gelu": True, "tanh": True,
    "celu": True, "elu": True, "smoothrelu": True,
}


def _module(name: str, **params) -> nn.Module:
    """A float64 module of the registered activation `name`."""
    return ACTIVATIONS.get(name).module(**params).to(DTYPE)


def _autograd_derivative(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f'(x) elementwise, by autograd (the activation is elementwise, so grad of the sum)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x).sum(), x)
    return grad


def _one_sided_derivatives(module: nn.Module, h: float = 1e-9) -> tuple[float, float]:
    """The autograd derivative just left and just right of 0."""
    grad = _autograd_derivative(module, torch.tensor([-h, h], dtype=DTYPE))
    return grad[0].item(), grad[1].item()


def _relu_grad(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype)


# --- closed-form derivatives -----------------------------------------------------------------

def test_registry_has_every_activation_of_the_spec():
    assert set(ACTIVATIONS.names()) == set(EXPECTED_C1)


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_closed_form_derivative_matches_autograd(name, params):
    entry = ACTIVATIONS.get(name)
    expected = _autograd_derivative(_module(name, **params), GRID)
    torch.testing.assert_close(entry.grad(GRID, **params), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_closed_form_derivative_matches_central_finite_differences(name, params):
    entry, module, h = ACTIVATIONS.get(name), _module(name, **params), 1e-6
    with torch.no_grad():
        numeric = (module(GRID + h) - module(GRID - h)) / (2 * h)
    torch.testing.assert_close(entry.grad(GRID, **params), numeric, rtol=1e-5, atol=1e-6)


# --- formulas of the paper -------------------------------------------------------------------

def _values(module: nn.Module, xs: list[float]) -> list[float]:
    with torch.no_grad():
        return module(torch.tensor(xs, dtype=DTYPE)).tolist()


XS = [-3.0, -0.7, -0.05, 0.0, 0.02, 0.3, 1.5, 3.0]


def test_parametric_softplus_defaults_to_alpha_10_and_alias_psoftplus():
    entry = ACTIVATIONS.get("psoftplus")
    assert entry is ACTIVATIONS.get("parametric-softplus")
    module = entry.module()
    assert isinstance(module, ParametricSoftplus) and module.alpha == 10.0


def test_parametric_softplus_is_log_one_plus_exp_alpha_x_over_alpha():
    expected = [math.log1p(math.exp(10 * x)) / 10 for x in XS]
    assert _values(_module("parametric-softplus"), XS) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("alpha", [400.0, 7.0])
def test_smoothrelu_is_x_minus_log_alpha_x_plus_one_over_alpha(alpha):
    module = _module("smoothrelu", alpha=alpha)
    a = module.alpha.item()  # α as stored (via a float32 log α), within 1e-6 of the request
    assert a == pytest.approx(alpha, rel=1e-6)
    expected = [x - math.log(a * x + 1) / a if x >= 0 else 0.0 for x in XS]
    assert _values(module, XS) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_elu_formula(alpha):
    expected = [x if x > 0 else alpha * (math.exp(x) - 1) for x in XS]
    assert _values(_module("elu", alpha=alpha), XS) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_celu_formula(alpha):
    expected = [x if x > 0 else alpha * (math.exp(x / alpha) - 1) for x in XS]
    assert _values(_module("celu", alpha=alpha), XS) == pytest.approx(expected, abs=1e-12)


def test_silu_is_x_times_sigmoid_and_alias_swish():
    assert ACTIVATIONS.get("swish") is ACTIVATIONS.get("silu")
    expected = [x / (1 + math.exp(-x)) for x in XS]
    assert _values(_module("silu"), XS) == pytest.approx(expected, abs=1e-12)


def test_gelu_is_x_times_standard_normal_cdf():
    expected = [x * 0.5 * (1 + math.erf(x / math.sqrt(2))) for x in XS]
    assert _values(_module("gelu"), XS) == pytest.approx(expected, abs=1e-12)


# --- smoothrelu ----------------------------------------------------------------------------

def test_smoothrelu_approaches_relu_as_alpha_grows():
    x = torch.linspace(-3.0, 3.0, 601, dtype=DTYPE)
    gaps = []
    for alpha in (1.0, 10.0, 100.0, 1e4):
        with torch.no_grad():
            gaps.append((_module("smoothrelu", alpha=alpha)(x) - torch.relu(x)).abs().max().item())
        # The gap is largest at x = 3, where it is log(3α + 1)/α.
        assert gaps[-1] == pytest.approx(math.log(3 * alpha + 1) / alpha, rel=1e-6)
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 2e-3


def test_smoothrelu_alpha_is_one_learnable_parameter_starting_at_400():
    module = SmoothReLU()
    assert [name for name, _ in module.named_parameters()] == ["log_alpha"]
    assert module.alpha.item() == pytest.approx(400.0, rel=1e-6)
    assert ACTIVATIONS.get("smoothrelu").module().alpha.item() == pytest.approx(400.0, rel=1e-6)
    module(torch.linspace(0, 3, 10)).sum().backward()
    assert module.log_alpha.grad is not None and module.log_alpha.grad.item() != 0


def test_smoothrelu_alpha_stays_positive_when_training_pushes_it_down():
    module = SmoothReLU()
    optimizer = torch.optim.Adam(module.parameters(), lr=1.0)
    x = torch.linspace(0, 3, 50)
    for _ in range(30):  # f grows with α, so minimising f drives α towards 0
        optimizer.zero_grad()
        module(x).sum().backward()
        optimizer.step()
    assert 0 < module.alpha.item() < 1e-3
    assert torch.isfinite(module(x)).all()


# --- C¹ --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED_C1))
def test_is_c1_flag_and_derivative_jump_at_zero_agree(name):
    left, right = _one_sided_derivatives(_module(name))
    assert ACTIVATIONS.get(name).is_c1() is EXPECTED_C1[name]
    assert (abs(left - right) < 1e-5) is EXPECTED_C1[name]


@pytest.mark.parametrize("alpha", [0.3, 1.0, 3.0])
def test_celu_is_c1_for_every_alpha(alpha):
    left, right = _one_sided_derivatives(_module("celu", alpha=alpha))
    assert ACTIVATIONS.get("celu").is_c1(alpha=alpha)
    assert left == pytest.approx(right, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 3.0])
def test_elu_is_c1_only_for_alpha_one(alpha):
    left, right = _one_sided_derivatives(_module("elu", alpha=alpha))
    assert left == pytest.approx(alpha, abs=1e-6)
    assert right == 1.0
    assert ACTIVATIONS.get("elu").is_c1(alpha=alpha) is (abs(left - right) < 1e-5)
    assert ACTIVATIONS.get("elu").is_c1(alpha=alpha) is (alpha == 1.0)


# --- names, parameters and specs -------------------------------------------------------------

def test_unknown_activation_lists_the_known_names():
    with pytest.raises(UnknownNameError) as info:
        get_activation("rectifier")
    message = str(info.value)
    assert "rectifier" in message
    assert all(name in message for name in ACTIVATIONS.names())


def test_unknown_parameter_is_a_user_error_naming_it():
    with pytest.raises(RobevalError, match="alpha"):
        get_activation("relu(alpha=2)")
    with pytest.raises(RobevalError, match="beta"):
        ACTIVATIONS.get("elu").module(beta=1.0)


@pytest.mark.parametrize("spec", ["elu(alpha=abc)", "celu(alpha=true)"])
def test_non_numeric_parameter_is_a_user_error(spec):
    with pytest.raises(RobevalError, match="not a number"):
        get_activation(spec)


@pytest.mark.parametrize("spec", ["smoothrelu(alpha=0)", "parametric-softplus(alpha=-1)",
                                  "celu(alpha=0)"])
def test_non_positive_alpha_is_a_user_error(spec):
    with pytest.raises(RobevalError, match="> 0"):
        get_activation(spec)


def test_spec_with_parameter_parses_and_builds():
    entry, params = get_activation("ELU(alpha=0.5)")
    assert entry.name == "elu" and params == {"alpha": 0.5}
    assert entry.module(**params).alpha == 0.5
    assert canonical_activation("psoftplus") == "parametric-softplus(alpha=10.0)"


def test_fraction_numbers_parse():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    _, params = get_activation("leakyrelu(negative_slope=1/8)")
    assert params == {"negative_slope": 0.125}


# --- surrogate-gradient ReLU (SAT Table 1) -------------------------------------------------

CASES = [(mode, phase) for mode in SMOOTH_GRAD_MODES for phase in PHASES]


def _surrogate_grad(module: nn.Module, x: torch.Tensor, phase: str) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with gradient_phase(module, phase):
        out = module(x)
    torch.testing.assert_close(out, torch.relu(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    return grad


def test_smooth_grad_modes_are_the_four_rows_of_table_1():
    assert SMOOTH_GRAD_MODES == {"none": (False, False), "attacker": (True, False),
                                 "optimizer": (False, True), "both": (True, True)}


@pytest.mark.parametrize(("mode", "phase"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_surrogate_relu_forward_is_relu_and_backward_follows_mode_and_phase(mode, phase):
    module = surrogate_relu(mode)()
    smooth_attacker, smooth_optimizer = SMOOTH_GRAD_MODES[mode]
    assert (module.smooth_attacker, module.smooth_optimizer) == (smooth_attacker, smooth_optimizer)
    smooth = ((phase == "attacker" and smooth_attacker)
              or (phase == "optimizer" and smooth_optimizer))
    expected = torch.sigmoid(10 * GRID) if smooth else _relu_grad(GRID)
    torch.testing.assert_close(_surrogate_grad(module, GRID, phase), expected)


@pytest.mark.parametrize("phase", ["attacker", "optimizer"])
def test_surrogate_smooth_flag_switches_the_backward_of_its_phase(phase):
    smooth = SurrogateReLU(**{f"smooth_{phase}": True})
    exact = SurrogateReLU(**{f"smooth_{phase}": False})
    torch.testing.assert_close(_surrogate_grad(smooth, GRID, phase), torch.sigmoid(10 * GRID))
    torch.testing.assert_close(_surrogate_grad(exact, GRID, phase), _relu_grad(GRID))


def test_surrogate_default_phase_is_exact_relu_gradient():
    module = SurrogateReLU(smooth_attacker=True, smooth_optimizer=True)
    assert module.phase == "exact" and module.alpha == 10.0
    x = GRID.clone().requires_grad_(True)
    module(x).sum().backward()
    torch.testing.assert_close(x.grad, _relu_grad(GRID))


def test_surrogate_forward_without_grad_is_relu():
    module = SurrogateReLU(smooth_attacker=True)
    with gradient_phase(module, "attacker"), torch.no_grad():
        torch.testing.assert_close(module(GRID), torch.relu(GRID))


def test_gradient_phase_sets_every_surrogate_and_restores_on_exception():
    model = nn.Sequential(nn.Linear(3, 3), surrogate_relu("both")(), surrogate_relu("both")())
    surrogates = [model[1], model[2]]
    with gradient_phase(model, "attacker"):
        assert [m.phase for m in surrogates] == ["attacker", "attacker"]
        with pytest.raises(RuntimeError), gradient_phase(model, "optimizer"):
            assert [m.phase for m in surrogates] == ["optimizer", "optimizer"]
            raise RuntimeError("inside the phase")
        assert [m.phase for m in surrogates] == ["attacker", "attacker"]
    assert [m.phase for m in surrogates] == ["exact", "exact"]


def test_double_backprop_through_smooth_surrogate():
    module = SurrogateReLU(smooth_attacker=True)
    x = GRID.clone().requires_grad_(True)
    with gradient_phase(module, "attacker"):
        out = module(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)
    sig = torch.sigmoid(10 * GRID)
    assert torch.isfinite(second).all() and second.abs().max() > 0
    torch.testing.assert_close(second, 10 * sig * (1 - sig))


def test_double_backprop_through_network_reaches_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), surrogate_relu("attacker")(), nn.Linear(8, 1))
    model = model.to(DTYPE)
    x = torch.randn(5, 4, dtype=DTYPE, requires_grad=True)
    with gradient_phase(model, "attacker"):
        out = model(x).sum()
    (input_grad,) = torch.autograd.grad(out, x, create_graph=True)
    (weight_grad,) = torch.autograd.grad(input_grad.pow(2).sum(), model[0].bias)
    assert torch.isfinite(weight_grad).all() and weight_grad.abs().max() > 0


def test_activation_factory_smooth_grad_needs_relu():
    with pytest.raises(RobevalError, match="relu"):
        activation_factory("gelu", smooth_grad="attacker")
    with pytest.raises(RobevalError, match="smooth-grad"):
        activation_factory("relu", smooth_grad="sometimes")
    module = activation_factory("relu", smooth_grad="both")()
    assert isinstance(module, SurrogateReLU)
    assert module.smooth_attacker and module.smooth_optimizer


def test_activation_factory_builds_a_new_module_each_call():
    factory = activation_factory("smoothrelu(alpha=50)")
    first, second = factory(), factory()
    assert first is not second and first.log_alpha is not second.log_alpha
    assert first.alpha.item() == pytest.approx(50.0, rel=1e-6)
