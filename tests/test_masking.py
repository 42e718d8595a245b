"""Gradient-masking checks: honest models pass every check, deliberately masked ones are flagged."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from pyautoattack import checks as aa_checks
from torch import Tensor, nn

import robeval
from robeval.data import load_test_set
from robeval.diagnostics.masking import CHEAP_CHECKS, CHECKS, run_checks
from robeval.errors import RobevalError
from robeval.runs import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 8 / 255
N_IMAGES = 200
QUERIES = 200  # Square's budget in black_box: enough to break an unmasked cnn-small, fast on CPU
OPTIONS = {"black_box": {"queries": QUERIES}}



@pytest.fixture(scope="module")
def standard_model(cifar10_mini_dir, tmp_path_factory):
    """cnn-small trained without an adversary for 3 epochs on cifar10-mini (only `slow` tests use it)."""
    from robeval.train import resolve_config, train

    config = resolve_config("ci-small", overrides={
        "data": {"dataset": "cifar10", "data_dir": str(cifar10_mini_dir), "val_size": 200},
        "adversary": {"method": "standard"}, "epochs": 3})
    folder = tmp_path_factory.mktemp("masking") / "std"
    train(config, folder, progress=False, log=lambda _: None)
    return load_model(folder)


@pytest.fixture(scope="module")
def robust_model(trained_cifar_run):
    """cnn-small PGD-1-trained for 3 epochs on cifar10-mini (the shared session run)."""
    return load_model(trained_cifar_run)


@pytest.fixture(scope="module")
def batch(cifar10_mini_dir):
    """The first N_IMAGES cifar10-mini test images in [0,1] and their labels."""
    test = load_test_set("cifar10", cifar10_mini_dir, N_IMAGES)
    return test.images.float() / 255, test.labels


class Quantised(nn.Module):
    """Rounds the input to `levels` grey levels first: the gradient is zero almost everywhere."""

    def __init__(self, net: nn.Module, levels: int = 255):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * self.levels) / self.levels)


class Scaled(nn.Module):
    """Multiplies the logits by a huge constant: softmax saturates and CE gradients underflow."""

    def __init__(self, net: nn.Module, factor: float = 1e5):
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.factor


class Noisy(nn.Module):
    """Adds Gaussian noise to the input on every pass: a randomised defence."""

    def __init__(self, net: nn.Module, sigma: float = 0.03):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x + self.sigma * torch.randn_like(x))


class Softmaxed(nn.Module):
    """Returns probabilities instead of logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(1)


class GridOnlyGradients(nn.Module):
    """Honest on 8-bit images, gradient-free off them: FGSM from the clean image lands on the
    grid and works, PGD's random start leaves it and its steps stall."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        grid = torch.round(x * 255) / 255
        on_grid = ((x - grid).abs() < 1e-6).flatten(1).all(1).float().view(-1, 1, 1, 1)
        return self.net(grid + (x - grid) * on_grid)


class Dynamic(nn.Module):
    """Calls autograd inside its forward pass, as adaptive test-time defences do."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.net(probe).sum(), probe)
        return self.net(x + 0.0 * grad)


class Shatter(nn.Module):
    """h + 0.05·sin(500h): the same function to within 5% of a unit, a gradient of pure noise."""

    def forward(self, h: Tensor) -> Tensor:
        return h + 0.05 * torch.sin(500 * h)


def shattered(model: nn.Module) -> nn.Module:
    """A copy of a cnn-small whose first layer is followed by `Shatter`."""
    model = copy.deepcopy(model)
    model.net[0] = nn.Sequential(model.net[0], Shatter())
    return model


class ResizePad(nn.Module):
    """Resizes the input to a random smaller size and pads it back at a random place (Xie et al.)."""

    def __init__(self, net: nn.Module, smallest: int = 26):
        super().__init__()
        self.net, self.smallest = net, smallest

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-1]
        new = int(torch.randint(self.smallest, size + 1, ()))
        top, left = (int(v) for v in torch.randint(0, size - new + 1, (2,)))
        padded = x.new_zeros(x.shape)
        padded[..., top:top + new, left:left + new] = F.interpolate(x, size=(new, new), mode="nearest")
        return self.net(padded)


class Detached(nn.Module):
    """Cuts its input out of the graph: the output does not depend on it for autograd."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.detach())


# Each planted kind of masking and the cheap check that `robeval attack` flags it with.
ZOO = {
    "quantised input": (lambda model: Quantised(model), "gradients"),
    "logits x1000": (lambda model: Scaled(model, 1000.0), "gradients"),
    "shattered first layer": (shattered, "gradient_quality"),
    "random resize and pad": (ResizePad, "determinism"),
    "detached forward": (Detached, "gradients"),
}


def attack_flags(model: nn.Module, data_dir) -> dict[str, str]:
    """The flags `robeval attack` (FGSM on 100 images, then its cheap checks) raises for `model`."""
    result = robeval.evaluate_model(model, dataset="cifar10", data_dir=data_dir, eps=EPS, suite="fgsm",
                                    n=100, batch_size=100, log=lambda _: None)
    assert [check.name for check in result.checks] == list(CHEAP_CHECKS)
    return flagged(result.checks)


@pytest.mark.parametrize("kind", ZOO)
@pytest.mark.slow
def test_planted_masking_is_flagged_by_robeval_attack(kind, standard_model, cifar10_mini_dir):
    wrap, expected = ZOO[kind]
    assert expected in attack_flags(wrap(standard_model), cifar10_mini_dir)


# standard_model is trained only for the slow tests; the shared robust one costs this file nothing
@pytest.mark.parametrize("which", [pytest.param("standard_model", marks=pytest.mark.slow), "robust_model"])
def test_honest_models_raise_no_flag_under_robeval_attack(which, cifar10_mini_dir, request):
    assert attack_flags(request.getfixturevalue(which), cifar10_mini_dir) == {}


@pytest.mark.slow
def test_unbounded_flags_zero_gradients_from_the_clean_image(standard_model, batch):
    result = check("unbounded", Quantised(standard_model), batch)
    accuracy, chance = result.evidence["accuracy"], result.evidence["chance"]
    assert not result.passed and "clean start" in result.flag
    assert accuracy["random_start"] < accuracy["clean_start"] and accuracy["clean_start"] > 3 * chance
    assert not check("unbounded", Scaled(standard_model, 1000.0), batch).passed


@pytest.mark.slow
def test_larger_eps_flags_a_flat_curve(standard_model, batch):
    result = check("larger_eps", Quantised(standard_model, levels=8), batch)
    assert not result.passed and "flat" in result.flag, result.evidence
    assert result.evidence["retained_at_4eps"] > 0.5


@pytest.mark.slow
def test_gradient_quality_flags_shattered_gradients_and_measures_honest_ones(standard_model, batch):
    shattered_result = check("gradient_quality", shattered(standard_model), batch)
    honest = check("gradient_quality", standard_model, batch)
    assert not shattered_result.passed and honest.passed
    assert shattered_result.evidence["median_alignment"] < 0.1 < honest.evidence["median_alignment"]


@pytest.fixture(scope="module")
def small_batch(batch):
    """The first 64 images, for tests of bookkeeping rather than of verdicts."""
    images, labels = batch
    return images[:64], labels[:64]


def check(name: str, model: nn.Module, batch, **options):
    """Run one check on the batch; its result must be JSON-serialisable."""
    images, labels = batch
    (result,) = run_checks(model, images, labels, eps=EPS, norm="linf", seed=0, names=[name],
                           options={name: options} if options else None)
    json.dumps(asdict(result), allow_nan=False)
    return result


def flagged(results) -> dict[str, str]:
    """Name → flag of the checks that raised one."""
    return {result.name: result.flag for result in results if not result.passed}


@pytest.mark.parametrize("which", ["standard_model", "robust_model"])
@pytest.mark.slow
def test_honest_models_raise_no_flag(which, batch, request):
    model = request.getfixturevalue(which)
    images, labels = batch
    results = run_checks(model, images, labels, eps=EPS, norm="linf", seed=0, names="all",
                         options=OPTIONS)
    assert [result.name for result in results] == list(CHECKS)
    assert flagged(results) == {}
    for result in results:
        json.dumps(asdict(result), allow_nan=False)
        assert result.explanation and result.flag is None


@pytest.mark.slow
def test_quantised_input_is_flagged_by_gradients_and_black_box(standard_model, batch):
    model = Quantised(standard_model)
    gradients = check("gradients", model, batch)
    assert not gradients.passed and gradients.evidence["fraction"] == 1.0
    black_box = check("black_box", model, batch, queries=100)  # Square breaks ~40 within 100 queries
    assert not black_box.passed, black_box.evidence
    assert black_box.evidence["square_only_broke"] == len(black_box.evidence["square_only_indices"])


@pytest.mark.slow
def test_saturated_logits_are_flagged_by_gradients(standard_model, batch):
    result = check("gradients", Scaled(standard_model), batch)
    assert not result.passed and result.evidence["zero_gradients"] > 0.9 * result.evidence["correct"]
    logits = check("logits", Scaled(standard_model), batch)  # exp overflows: evidence keeps "inf"
    assert logits.passed and logits.evidence["max_exp_sum_error"] == "inf"


@pytest.mark.slow
def test_random_noise_is_flagged_by_determinism(standard_model, batch):
    result = check("determinism", Noisy(standard_model), batch)
    assert not result.passed and result.evidence["repeat_difference"] > 1e-2
    assert not check("autoattack_checks", Noisy(standard_model), batch).passed
    more = check("more_iterations", Noisy(standard_model), batch)  # the best noisy iterate regresses
    assert not more.passed, more.evidence


@pytest.mark.slow
def test_gradients_only_on_clean_images_are_flagged_by_fgsm_vs_pgd(standard_model, batch):
    result = check("fgsm_vs_pgd", GridOnlyGradients(standard_model), batch)
    assert not result.passed and result.evidence["only_weaker_broke"] > 20, result.evidence


@pytest.mark.slow
def test_probabilities_are_flagged_by_logits(standard_model, batch):
    result = check("logits", Softmaxed(standard_model), batch)
    assert not result.passed and result.evidence["outputs"] == "probabilities"
    log_probabilities = nn.Sequential(standard_model, nn.LogSoftmax(1))
    assert check("logits", log_probabilities, batch).evidence["outputs"] == "log-probabilities"
    warnings = check("autoattack_checks", Softmaxed(standard_model), batch).evidence["warnings"]
    assert any("probability distribution" in warning for warning in warnings)


@pytest.mark.slow
def test_autoattack_checks_leave_pyautoattack_and_the_tracer_as_they_were(standard_model, small_batch):
    counters, previous = dict(aa_checks.funcs), sys.gettrace()

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        dynamic = check("autoattack_checks", Dynamic(standard_model), small_batch)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
    assert not dynamic.passed and any("dynamic" in w for w in dynamic.evidence["warnings"])
    assert aa_checks.funcs == counters
    assert check("autoattack_checks", standard_model, small_batch).passed


@pytest.mark.slow
def test_cheap_selection_runs_only_the_cheap_checks(standard_model, small_batch):
    images, labels = small_batch
    for names in (None, "cheap"):
        results = run_checks(standard_model, images, labels, eps=EPS, norm="linf", seed=0, names=names)
        assert [result.name for result in results] == list(CHEAP_CHECKS)
    assert set(CHEAP_CHECKS) < set(CHECKS)


@pytest.mark.slow
def test_unknown_check_names_the_known_ones(standard_model, small_batch):
    images, labels = small_batch
    with pytest.raises(RobevalError, match="unknown masking check 'nope'.*determinism.*black_box"):
        run_checks(standard_model, images, labels, eps=EPS, names=["determinism", "nope"])
    with pytest.raises(RobevalError, match="unknown masking check 'nope'"):
        run_checks(standard_model, images, labels, eps=EPS, options={"nope": {"queries": 1}})


@pytest.mark.slow
def test_checks_restore_mode_rng_and_leave_no_parameter_gradients(standard_model, small_batch):
    images, labels = small_batch
    standard_model.train()
    state = torch.get_rng_state()
    try:
        results = run_checks(standard_model, images, labels, eps=EPS, seed=5,
                             names=["determinism", "fgsm_vs_pgd", "gradients"])
        assert standard_model.training and all(m.training for m in standard_model.modules())
    finally:
        standard_model.eval()
    assert flagged(results) == {}  # batch statistics would make determinism flag a train-mode model
    assert torch.equal(torch.get_rng_state(), state)
    assert all(parameter.grad is None for parameter in standard_model.parameters())


def test_checks_are_reproducible_for_a_seed(robust_model, small_batch):
    first = check("fgsm_vs_pgd", robust_model, small_batch)
    second = check("fgsm_vs_pgd", robust_model, small_batch)
    assert first.evidence == second.evidence
