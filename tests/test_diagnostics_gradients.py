"""First-order diagnostics: R(x,δ), gradient norms, alignment, gradient Lipschitz, loss gap."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robeval.diagnostics import (
    QUANTITIES,
    batch_diagnostics,
    fgsm_delta,
    gradient_alignment,
    gradient_diagnostics,
    gradient_lipschitz,
    input_gradient_norms,
    linearisation_error,
    loss_gap,
    pgd_delta,
    random_delta,
    summarise,
    summary_dict,
)
from robeval.errors import RobevalError
from robeval.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CIFAR_NORMALISATION = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}



def assert_close(actual, expected, rtol=1.3e-6, atol=1e-5, what=""):
    """Elementwise |actual − expected| ≤ atol + rtol·|expected| (torch.allclose), with a message."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    worst = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"{what}: max difference {worst}"


def cifar_like(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (a 4×4 colour field upsampled, plus a little noise) and labels."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    images = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    images = images + 0.05 * torch.randn(n, 3, size, size, generator=generator)
    return images.clamp(0, 1), torch.randint(0, 10, (n,), generator=generator)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set BatchNorm running statistics to those of `images`, so pre-activations are centred."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def with_average_pooling(model: nn.Module) -> nn.Module:
    """Swap max-pooling (piecewise linear, hence a source of kinks) for average pooling."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size))
    return model


def negative_true_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A per-sample loss that is linear in the logits."""
    return -logits.gather(1, labels[:, None]).squeeze(1)


@pytest.fixture(scope="module")
def relu_cnn():
    """A random-init ReLU cnn-small with BatchNorm calibrated on cifar-like images."""
    torch.manual_seed(0)
    model = build_model("cnn-small", "relu", **CIFAR_NORMALISATION)
    return calibrate_batchnorm(model, cifar_like(64, seed=99)[0])


@pytest.fixture
def linear_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double().eval()


@pytest.fixture
def small_batch():
    images, labels = cifar_like(6, seed=3, size=4)
    return images.double(), labels % 5


# --- R(x, δ) ---------------------------------------------------------------------------------

def test_R_vanishes_when_the_loss_is_linear_in_the_input(linear_model, small_batch):
    """A linear model with a loss linear in the logits has a loss linear in x: R ≡ 0."""
    x, y = small_batch
    deltas = [torch.randn_like(x), random_delta(x, 8 / 255, seed=4),
              fgsm_delta(linear_model, x, y, 8 / 255, loss_fn=negative_true_logit)]
    for delta in deltas:
        error = linearisation_error(linear_model, x, y, delta, loss_fn=negative_true_logit)
        assert error.shape == (len(x),)
        assert error.abs().max() < 1e-10


def test_R_is_nonnegative_for_cross_entropy_of_a_linear_model(linear_model, small_batch):
    """CE is convex in the logits, hence in x for a linear model: L(x+δ) ≥ L(x) + ⟨∇L, δ⟩."""
    x, y = small_batch
    errors = torch.cat([linearisation_error(linear_model, x, y, 0.5 * torch.randn_like(x))
                        for _ in range(5)])
    assert errors.min() > -1e-12
    assert errors.mean() > 1e-6


def test_R_at_fgsm_grows_in_magnitude_with_eps_for_a_relu_net(relu_cnn):
    """On a random ReLU cnn-small the FGSM linearisation error is negative (the loss rises less
    than the linearisation predicts) and its mean magnitude increases strictly with ε."""
    x, y = cifar_like(16)
    magnitudes = []
    for eps in (2 / 255, 4 / 255, 8 / 255, 16 / 255):
        error = linearisation_error(relu_cnn, x, y, fgsm_delta(relu_cnn, x, y, eps))
        magnitudes.append(error.abs().mean().item())
    assert all(a < b for a, b in zip(magnitudes, magnitudes[1:], strict=False)), magnitudes


def test_R_is_quadratic_in_eps_for_a_smooth_net_and_not_for_relu():
    """Same weights, ReLU vs parametric Softplus (α=10), average pooling, float64, random δ.

    A C¹ network whose input gradient is M-Lipschitz has |R| ≤ (M/2)‖δ‖², and for small δ
    R ≈ ½δᵀHδ, so mean |R| scales exactly as ε²: shrinking ε by 4 shrinks it by 16. A ReLU
    network's gradient jumps at every kink: each unit that δ pushes across its kink adds a
    term of size O(ε) with probability O(ε), and these terms have random signs after the
    downstream layers, so mean |R| scales like ε^1.5 (ratio ≈ 8; measured 6–9.5 over seeds).
    Max-pooling is also piecewise linear, so it is replaced by average pooling in both nets to
    make the smooth one really C¹. Both ε use the same random direction (same seed), so the
    ratio compares R along one line per sample. At the same weights the smooth net's |R| is
    also smaller.
    """
    x, y = cifar_like(16, seed=5)
    torch.manual_seed(5)
    relu = calibrate_batchnorm(with_average_pooling(build_model("cnn-small", "relu",
                                                                **CIFAR_NORMALISATION)), x)
    smooth = with_average_pooling(build_model("cnn-small", "parametric-softplus(alpha=10)",
                                              **CIFAR_NORMALISATION))
    smooth.load_state_dict(relu.state_dict())
    x = x.double()
    mean_abs_error = {}
    for name, model in (("relu", relu.double().eval()), ("smooth", smooth.double().eval())):
        for eps in (1 / 255, 0.25 / 255):
            delta = random_delta(x, eps, seed=6)
            mean_abs_error[name, eps] = linearisation_error(model, x, y, delta).abs().mean().item()
    ratio = {name: mean_abs_error[name, 1 / 255] / mean_abs_error[name, 0.25 / 255]
             for name in ("relu", "smooth")}
    assert 14 < ratio["smooth"] < 18, ratio
    assert ratio["relu"] < 12, ratio
    for eps in (1 / 255, 0.25 / 255):
        assert mean_abs_error["smooth", eps] < mean_abs_error["relu", eps]


# --- gradients -------------------------------------------------------------------------------

@pytest.fixture
def tiny_tanh_net():
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 7), nn.Tanh(), nn.Linear(7, 5)).double()


def test_gradient_norms_match_per_sample_autograd_and_finite_differences(tiny_tanh_net, small_batch):
    """Independent routes: one backward pass per sample, and central differences along random
    directions (which check the per-sample inner product ⟨∇L, v⟩ over all pixels)."""
    x, y = small_batch
    norms = input_gradient_norms(tiny_tanh_net, x, y)
    for i in range(len(x)):
        point = x[i:i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(tiny_tanh_net(point), y[i:i + 1]), point)
        assert norms["grad_l1"][i].item() == pytest.approx(grad.abs().sum().item(), rel=1e-10)
        assert norms["grad_l2"][i].item() == pytest.approx(grad.pow(2).sum().sqrt().item(), rel=1e-10)
    direction, h = torch.randn_like(x), 1e-5
    with torch.no_grad():
        clean, plus, minus = (F.cross_entropy(tiny_tanh_net(point), y, reduction="none")
                              for point in (x, x + h * direction, x - h * direction))
    finite_difference = (plus - minus) / (2 * h)
    # L(x+hv) − L(x) − R(x, hv) is the first-order term h⟨∇L(x), v⟩.
    inner_product = (plus - clean - linearisation_error(tiny_tanh_net, x, y, h * direction)) / h
    assert_close(inner_product, finite_difference, rtol=1e-6, atol=1e-9)


def test_alignment_and_lipschitz_for_a_linear_loss(linear_model, small_batch):
    """A loss linear in x has a constant gradient: cosine 1, gradient change 0."""
    x, y = small_batch
    alignment = gradient_alignment(linear_model, x, y, 8 / 255, loss_fn=negative_true_logit)
    assert_close(alignment, torch.ones(len(x), dtype=alignment.dtype))
    lipschitz = gradient_lipschitz(linear_model, x, y, random_delta(x, 8 / 255),
                                   loss_fn=negative_true_logit)
    assert lipschitz.abs().max() < 1e-10


def test_lipschitz_is_nan_for_a_zero_perturbation(linear_model, small_batch):
    x, y = small_batch
    assert gradient_lipschitz(linear_model, x, y, torch.zeros_like(x)).isnan().all()


def test_alignment_is_a_cosine_and_pgd_beats_fgsm_on_average(relu_cnn):
    x, y = cifar_like(32, seed=7)
    alignment = gradient_alignment(relu_cnn, x, y, 8 / 255, seed=1)
    assert alignment.shape == (32,)
    assert ((alignment >= -1 - 1e-6) & (alignment <= 1 + 1e-6)).all()
    assert alignment.min() < 0.999  # a ReLU net's gradient does change within the ball
    gap = loss_gap(relu_cnn, x, y, 8 / 255, steps=10)
    assert gap.mean() > 0
    assert (gap > 0).float().mean() > 0.5


# --- perturbations ---------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbations_stay_in_the_ball_and_the_box(relu_cnn, norm):
    x, y = cifar_like(8, seed=8)
    x[:, :, :4] = 1.0  # saturated pixels, where clipping to the box matters
    eps = 8 / 255 if norm == "linf" else 0.5
    deltas = {"fgsm": fgsm_delta(relu_cnn, x, y, eps, norm),
              "random": random_delta(x, eps, norm, seed=3),
              "pgd": pgd_delta(relu_cnn, x, y, eps, norm, steps=3, seed=3)}
    for name, delta in deltas.items():
        size = delta.flatten(1).abs().amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)
        assert (size <= eps * (1 + 1e-5)).all(), name
        assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all(), name
        assert (delta[:, :, :4] <= 0).all(), name


def test_l2_fgsm_is_the_normalised_gradient_scaled_to_eps(relu_cnn):
    x, y = torch.full((4, 3, 32, 32), 0.5), torch.arange(4)  # far from the box: no clipping
    delta = fgsm_delta(relu_cnn, x, y, 0.1, "l2")
    point = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(relu_cnn(point), y, reduction="sum"), point)
    assert_close(delta.flatten(1).norm(dim=1), torch.full((4,), 0.1))
    cosine = F.cosine_similarity(delta.flatten(1), grad.flatten(1), dim=1)
    assert_close(cosine, torch.ones(4))
    linf = fgsm_delta(relu_cnn, x, y, 0.1, "linf")
    assert_close(linf, 0.1 * grad.sign())


# --- the bundle ------------------------------------------------------------------------------

def test_diagnostics_are_seeded_and_leave_the_global_rng_alone(relu_cnn):
    x, y = cifar_like(8, seed=9)
    state = torch.get_rng_state()
    first = gradient_diagnostics(relu_cnn, x, y, 8 / 255, pgd_steps=3, seed=11)
    second = gradient_diagnostics(relu_cnn, x, y, 8 / 255, pgd_steps=3, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    assert list(first) == list(QUANTITIES)
    for name in QUANTITIES:
        assert first[name].shape == (8,) and first[name].device.type == "cpu"
        assert torch.equal(first[name], second[name]), name
    other = gradient_diagnostics(relu_cnn, x, y, 8 / 255, pgd_steps=3, seed=12)
    assert not torch.equal(first["R_random"], other["R_random"])


def test_bundle_agrees_with_the_standalone_functions(relu_cnn):
    x, y = cifar_like(8, seed=10)
    eps, seed = 4 / 255, 2
    values = gradient_diagnostics(relu_cnn, x, y, eps, pgd_steps=3, seed=seed)
    pgd = pgd_delta(relu_cnn, x, y, eps, steps=3, seed=seed)
    expected = {
        "R_fgsm": linearisation_error(relu_cnn, x, y, fgsm_delta(relu_cnn, x, y, eps)),
        "R_random": linearisation_error(relu_cnn, x, y, random_delta(x, eps, seed=seed)),
        "R_pgd": linearisation_error(relu_cnn, x, y, pgd),
        **input_gradient_norms(relu_cnn, x, y),
        "grad_alignment": gradient_alignment(relu_cnn, x, y, eps, seed=seed),
        "grad_lipschitz": gradient_lipschitz(relu_cnn, x, y, pgd),
        "loss_gap": loss_gap(relu_cnn, x, y, eps, steps=3, seed=seed),
    }
    for name, value in expected.items():
        assert_close(values[name], value, rtol=1e-5, atol=1e-6, what=name)


def test_batch_diagnostics_concatenates_seeded_chunks(relu_cnn):
    x, y = cifar_like(10, seed=12)
    values = batch_diagnostics(relu_cnn, x, y, 8 / 255, pgd_steps=2, seed=4, batch_size=4)
    assert all(values[name].shape == (10,) for name in QUANTITIES)
    last_chunk = gradient_diagnostics(relu_cnn, x[8:], y[8:], 8 / 255, pgd_steps=2, seed=4 + 2)
    for name in QUANTITIES:
        assert_close(values[name][8:], last_chunk[name])
    with pytest.raises(RobevalError, match="batch_size"):
        batch_diagnostics(relu_cnn, x, y, 8 / 255, batch_size=0)


class _RecordsMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return x


def test_training_flags_restored_and_no_parameter_grads():
    torch.manual_seed(3)
    recorder = _RecordsMode()
    model = nn.Sequential(build_model("cnn-small", "relu"), recorder)
    model.train()
    model[0].net[1].eval()  # a mixed state must come back exactly
    flags = [module.training for module in model.modules()]
    buffers = {key: value.clone() for key, value in model.state_dict().items()}
    x, y = cifar_like(4, seed=13)
    gradient_diagnostics(model, x, y, 8 / 255, pgd_steps=2)
    loss_gap(model, x, y, 8 / 255, steps=2)
    input_gradient_norms(model, x, y)
    assert recorder.seen_training and not any(recorder.seen_training)
    assert [module.training for module in model.modules()] == flags
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(torch.equal(value, buffers[key]) for key, value in model.state_dict().items())


def test_shape_errors_are_one_line_robeval_errors(linear_model, small_batch):
    x, y = small_batch
    with pytest.raises(RobevalError, match="one perturbation per image"):
        linearisation_error(linear_model, x, y, x[:2])
    with pytest.raises(RobevalError, match="one loss per sample"):
        linearisation_error(linear_model, x, y, x, loss_fn=lambda logits, labels: logits.sum())


# --- summaries -------------------------------------------------------------------------------

def test_summarise_statistics_on_a_hand_made_dict():
    values = {"R_fgsm": torch.tensor([-1.0, 0.0, 1.0, 2.0, math.nan, math.inf]),
              "loss_gap": torch.tensor([3.0]),
              "grad_l1": torch.tensor([math.nan])}
    frame = summarise(values)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["R_fgsm", "loss_gap", "grad_l1"]
    assert list(frame.columns) == ["mean", "median", "q05", "q25", "q75", "q95", "frac_negative",
                                   "n", "n_nonfinite"]
    row = frame.loc["R_fgsm"]
    expected = {"mean": 0.5, "median": 0.5, "q05": -0.85, "q25": -0.25, "q75": 1.25, "q95": 1.85,
                "frac_negative": 0.25, "n": 4, "n_nonfinite": 2}
    for column, value in expected.items():
        assert row[column] == pytest.approx(value), column
    assert frame.loc["loss_gap", "median"] == 3.0 and frame.loc["loss_gap", "q05"] == 3.0
    assert frame.loc["loss_gap", "frac_negative"] == 0.0
    assert frame.loc["grad_l1", "n"] == 0 and frame.loc["grad_l1", "n_nonfinite"] == 1
    assert math.isnan(frame.loc["grad_l1", "mean"])


def test_summary_dict_is_flat_python_floats():
    values = {"R_fgsm": torch.tensor([-1.0, 0.0, 4.0]), "grad_l1": torch.tensor([2.0, 4.0])}
    flat = summary_dict(values)
    assert flat == {"R_fgsm_mean": 1.0, "R_fgsm_median": 0.0,
                    "grad_l1_mean": 3.0, "grad_l1_median": 3.0}
    assert all(type(value) is float for value in flat.values())
