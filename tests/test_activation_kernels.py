"""The CPU forms of ELU, CELU, Softplus and SmoothReLU against torch's own kernels.

Each form must compute torch's function to rounding, with the same first and second
derivatives (so input-gradient regularisation trains through it), keep torch's module types
(code that looks for an nn.ELU finds one), and fall back to torch's kernel where the form would
compute something else (a low Softplus threshold or a negative β).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robeval import activation_kernels as kernels
from robeval.activations import ParametricSoftplus, SmoothReLU, get_activation

EDGES = [-100.0, -20.0, -1e-3, -1e-8, -0.0, 0.0, 1e-8, 1e-3, 20.0, 100.0]


def _inputs(dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(0)
    values = torch.cat([4 * torch.randn(4000, dtype=dtype), torch.tensor(EDGES, dtype=dtype)])
    return values.requires_grad_(True)


def _smooth_relu_reference(x, alpha):
    positive = x.clamp(min=0)
    return positive - torch.log1p(alpha * positive) / alpha


PAIRS = {
    "elu": (lambda x: kernels.elu(x), lambda x: F.elu(x)),
    "elu-alpha-2": (lambda x: kernels.elu(x, 2.0), lambda x: F.elu(x, 2.0)),
    "elu-alpha-0.3": (lambda x: kernels.elu(x, 0.3), lambda x: F.elu(x, 0.3)),
    "elu-alpha-minus-0.5": (lambda x: kernels.elu(x, -0.5), lambda x: F.elu(x, -0.5)),
    "celu-alpha-2": (lambda x: kernels.elu(x, 2.0, 0.5), lambda x: F.celu(x, 2.0)),
    "softplus": (lambda x: kernels.softplus(x), lambda x: F.softplus(x)),
    "softplus-beta-10": (lambda x: kernels.softplus(x, 10.0), lambda x: F.softplus(x, 10.0)),
    "smoothrelu": (lambda x: kernels.smooth_relu(x, torch.tensor(400.0)),
                   lambda x: _smooth_relu_reference(x, torch.tensor(400.0, dtype=x.dtype))),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_form_equals_torch_in_value_first_and_second_derivative(name, dtype):
    form, reference = PAIRS[name]
    x = _inputs(dtype)
    direction, curvature = torch.randn_like(x), torch.randn_like(x)
    results = []
    for function in (form, reference):
        out = function(x)
        (grad,) = torch.autograd.grad(out, x, direction, create_graph=True)
        (second,) = torch.autograd.grad(grad, x, curvature)
        results.append((out.detach(), grad.detach(), second))
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else \
        {"rtol": 1e-10, "atol": 1e-9}
    for ours, theirs in zip(*results, strict=True):
        assert ours.isfinite().all()
        torch.testing.assert_close(ours, theirs, **tolerance)


@pytest.mark.parametrize("function", [lambda x: kernels.elu(x, 1.5, 0.7),
                                      lambda x: kernels.softplus(x, 3.0)],
                         ids=["elu", "softplus"])
def test_forms_pass_gradcheck_and_gradgradcheck(function):
    x = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))


def test_smooth_relu_gradients_for_x_and_alpha_pass_gradcheck():
    x = torch.randn(12, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.smooth_relu, (x, alpha))
    assert torch.autograd.gradgradcheck(kernels.smooth_relu, (x, alpha))


def test_smooth_relu_alpha_gradient_equals_the_composite_forms():
    x = _inputs(torch.float64)
    results = []
    for function in (kernels.smooth_relu, _smooth_relu_reference):
        log_alpha = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        out = function(x, log_alpha.exp())
        results.append(torch.autograd.grad(out.square().sum(), [x, log_alpha]))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(("spec", "torch_type"), [("elu", nn.ELU), ("elu(alpha=2)", nn.ELU),
                                                  ("celu(alpha=2)", nn.CELU),
                                                  ("softplus", nn.Softplus)])
def test_registered_modules_are_torch_types_computed_by_the_forms(spec, torch_type):
    entry, params = get_activation(spec)
    module = entry.module(**params)
    assert isinstance(module, torch_type)
    x = _inputs(torch.float32)
    reference = torch_type(**({"alpha": params["alpha"]} if params else {}))
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-6)
    assert type(module).forward is not torch_type.forward


def test_sat_modules_use_the_forms():
    x = _inputs(torch.float32)
    torch.testing.assert_close(ParametricSoftplus(10.0)(x), F.softplus(x, 10.0),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(SmoothReLU(400.0)(x),
                               _smooth_relu_reference(x, torch.tensor(400.0)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["elu", "elu-alpha-2", "celu-alpha-2", "softplus"])
def test_elu_and_softplus_gradients_are_torchs_exactly(name):
    form, reference = PAIRS[name]
    x = _inputs(torch.float32)
    direction = torch.randn_like(x)
    grads = [torch.autograd.grad(function(x), x, direction)[0] for function in (form, reference)]
    assert torch.equal(*grads)


def test_softplus_with_a_low_threshold_is_torchs_kernel():
    x = _inputs(torch.float32)
    assert torch.equal(kernels.softplus(x, 1.0, 2.0), F.softplus(x, 1.0, 2.0))
    assert torch.equal(kernels.softplus(x, -1.0), F.softplus(x, -1.0))


def test_input_gradient_regularisation_trains_the_same_through_the_form():
    """IGR's ‖∇ₓL‖₁ needs the activation's second derivative: the weights' gradient must match."""
    grads = []
    for act in (lambda: kernels.ELU(), lambda: nn.ELU()):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(6, 16), act(), nn.Linear(16, 3)).double()
        x = torch.randn(32, 6, dtype=torch.float64, requires_grad=True)
        labels = torch.randint(0, 3, (32,))
        loss = F.cross_entropy(model(x), labels)
        (input_grad,) = torch.autograd.grad(loss, x, create_graph=True)
        penalised = loss + input_grad.abs().sum()
        grads.append(torch.autograd.grad(penalised, list(model.parameters())))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs)
