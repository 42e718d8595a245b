"""The planted models of benchmarks/planted.py do what their docstrings say (fast, on tiny nets)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robeval.attacks.apgd import malt_targets
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import planted  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 8 / 255


def small_net() -> nn.Module:
    """A tiny conv classifier of 32x32 colour images into 10 classes."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 15 * 15, 10)).eval()


def random_images(n: int = 16, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def sign_perturbed(images: torch.Tensor, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, images.shape, generator=generator).float() * 2 - 1
    return (images + EPS * signs).clamp(0, 1)


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, :3].sum(), x)
    return grad


@pytest.mark.parametrize("wrap, width", [
    (planted.TemperatureMasked, 10), (planted.PartialShatter, 10), (planted.DecoyClasses, 13),
    (lambda net: planted.DecoyClasses(net, decoys=3, replace=True), 10),
    (planted.TestTimeDropout, 10), (planted.InputMutating, 10)])
def test_every_construction_returns_a_batch_of_logits(wrap, width):
    model = wrap(small_net())
    assert model(random_images(5)).shape == (5, width)


def test_temperature_is_about_one_on_clean_images_and_grows_under_an_attack(cifar_test_batch):
    images = cifar_test_batch[0]
    model = planted.TemperatureMasked(small_net())
    clean, attacked = model.temperature(images), model.temperature(sign_perturbed(images))
    assert (clean >= 1).all() and clean.median() < 1.5
    assert attacked.median() > 10 * clean.median()
    # the prediction is the base network's: only the scale of the logits changes
    with torch.no_grad():
        assert torch.equal(model(images).argmax(1), model.net(images).argmax(1))
        scale = model.net(images) / model(images)
    assert torch.allclose(scale, clean[:, None].expand_as(scale), rtol=1e-4)


def test_temperature_fools_cross_entropy_but_not_a_scale_invariant_margin(cifar_test_batch):
    images = cifar_test_batch[0][:32]
    net = small_net()
    model = planted.TemperatureMasked(net)
    with torch.no_grad():
        labels = net(images).argmax(1)
    x = sign_perturbed(images)
    ce = F.cross_entropy(model(x), labels, reduction="none")
    # at the attacked point cross-entropy is close to log(10) although the class did not change
    assert ce.median() > 0.9 * torch.log(torch.tensor(10.0))
    assert torch.equal(model(x).argmax(1), net(x).argmax(1))


def test_partial_shatter_is_the_network_on_dark_images_and_shatters_gradients_on_bright_ones():
    net = small_net()
    model = planted.PartialShatter(net)
    dark, bright = 0.4 * random_images(4), 0.5 + 0.5 * random_images(4, seed=5)
    assert not model.masked(dark).any() and model.masked(bright).all()
    with torch.no_grad():
        assert torch.equal(model(dark), net(dark))
        assert torch.allclose(model(bright), net(bright), atol=0.05)
    assert torch.equal(input_gradient(model, dark), input_gradient(net, dark))
    cosine = F.cosine_similarity(input_gradient(model, bright).flatten(1),
                                 input_gradient(net, bright).flatten(1), dim=1)
    assert (cosine.abs() < 0.2).all()
    # the split is per image: a bright image is shattered whatever else is in the batch
    mixed = torch.cat([dark, bright])
    with torch.no_grad():
        assert torch.equal(model(mixed)[:4], net(dark))
        assert torch.allclose(model(mixed)[4:], model(bright))


@pytest.mark.parametrize("replace", [False, True])
def test_decoys_never_win_yet_malt_ranks_them_first(replace, cifar_test_batch):
    net = small_net()
    model = planted.DecoyClasses(net, decoys=3, replace=replace)
    live = 7 if replace else 10
    inputs = [random_images(64), cifar_test_batch[0], torch.zeros(2, 3, 32, 32),
              torch.ones(2, 3, 32, 32), sign_perturbed(cifar_test_batch[0][:64])]
    with torch.no_grad():
        for x in inputs:
            logits = model(x)
            assert (logits.argmax(1) < live).all()
            assert (logits[:, live:].max(1).values <= logits[:, :live].max(1).values - model.margin).all()
    images = cifar_test_batch[0][:32]
    with torch.no_grad():
        labels = model(images).argmax(1)
    targets = malt_targets(model, images, labels, "linf", 3)
    # all three targets are decoys except at points practically on a real boundary
    assert (targets >= live).all(1).float().mean() >= 0.9


def test_test_time_dropout_is_random_in_eval_mode():
    model = planted.TestTimeDropout(small_net(), p=0.5).eval()
    x = random_images(8)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert not torch.equal(first, second)


def test_input_mutating_halves_the_callers_tensor():
    net = small_net()
    model = planted.InputMutating(net)
    x = random_images(4)
    original = x.clone()
    with torch.no_grad():
        out = model(x)
    assert torch.equal(x, original * 0.5)
    assert torch.allclose(out, net(original * 0.5))


def test_the_benchmark_zoo_plants_three_of_them_beside_the_masked_model(tmp_path):
    import hashlib

    import bench_aa

    names = list(bench_aa.PLANTED)
    assert names[0] == bench_aa.MASKED_NAME and len(names) == 4
    for name in names:
        assert bench_aa.base_name(name) == bench_aa.MASKED_BASE
        assert bench_aa.cpu_batch(name) == bench_aa.cpu_batch(bench_aa.MASKED_BASE)
    order = [name for name, _ in bench_aa.zoo_order(quick=True)]
    start = order.index(bench_aa.MASKED_BASE)
    assert order[start + 1:start + 1 + len(names)] == names
    # one identity each, the masked model's as before (its stored outcomes stay valid)
    identities = {bench_aa.PLANTED[name].identity("0" * 64) for name in names}
    assert len(identities) == len(names) and "0" * 64 not in identities
    assert bench_aa.masked_identity("0" * 64) == hashlib.sha256(
        f"{'0' * 64}:quantised-zero-gradient".encode()).hexdigest()
    # each wraps any classifier into one with the dataset's 10 outputs (the engine requires it)
    net = small_net()
    for name in names:
        model = bench_aa.PLANTED[name].build(net)
        assert not model.training and model(random_images(3)).shape == (3, 10)
