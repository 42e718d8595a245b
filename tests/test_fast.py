"""`aa-fast`: breaks what AutoAttack breaks on honest models, is not fooled by masked ones, costs less."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from robeval.attacks import ThreatModel, build_attack, parse_suite
from robeval.data import load_test_set
from robeval.errors import RobevalError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEED = 2
EPS = 4 / 255
N_TEST = 96


class Counting(nn.Module):
    """Counts the images that go through the model forward, and back through it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.forward_images, self.backward_images = net, 0, 0

    def forward(self, x: Tensor) -> Tensor:
        n = len(x)
        self.forward_images += n
        out = self.net(x)
        if out.requires_grad:
            out.register_hook(lambda grad: self._backward(n))
        return out

    def _backward(self, n: int) -> None:
        self.backward_images += n

    @property
    def passes(self) -> int:
        return self.forward_images + self.backward_images


class Quantised(nn.Module):
    """Rounds the input to 255 grey levels first: the gradient is zero almost everywhere."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * 255) / 255)


@pytest.fixture(scope="module")
def model(cifar_mlp):
    """A one-hidden-layer MLP after 100 full-batch Adam steps on 512 CIFAR-10 images, frozen
    (a copy of the session's `cifar_mlp`)."""
    net = copy.deepcopy(cifar_mlp)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net.eval()


@pytest.fixture(scope="module")
def points(cifar10_mini_dir, model):
    """The clean-correct points among the first N_TEST test images."""
    test = load_test_set("cifar10", cifar10_mini_dir, N_TEST)
    images, labels = test.images.float() / 255, test.labels
    with torch.no_grad():
        keep = model(images).argmax(1) == labels
    return images[keep], labels[keep]


@pytest.fixture(scope="module")
def aa_run(model, points):
    """`aa` (pyautoattack's standard version) on the points, with its cost."""
    counting = Counting(model)
    outcome = build_attack("aa", ThreatModel(EPS)).run(counting, *points, SEED)
    return outcome, counting.passes


@pytest.mark.slow
def test_breaks_everything_aa_breaks_at_a_fraction_of_the_cost(model, points, aa_run):
    aa, aa_passes = aa_run
    counting = Counting(model)
    attack = gated(build_attack("aa-fast", ThreatModel(EPS)))
    fast = attack.run(counting, *points, SEED)
    assert 0 < int(aa.robust.sum()) < len(aa.robust)
    assert not (fast.robust & ~aa.robust).any()          # nothing aa breaks is left standing
    assert fast.notes["gate"]["fired"] is False          # an honest model: no black-box stage
    assert fast.notes["gate"]["points"] > 0              # ... though the gate looked
    assert counting.passes * 5 <= aa_passes
    assert float(fast.perturbation_norm.max()) <= EPS + 1e-6
    assert torch.equal(fast.robust, fast.margin > 0)
    assert fast.iterations is not None and int(fast.iterations.max()) <= 400


def test_a_masked_model_does_not_fool_it(model, points):
    masked = Quantised(model)
    threat = ThreatModel(8 / 255)
    gradient_only = parse_suite("apgd-ce,apgd-t(select=malt,targets=3)", threat)
    standing = torch.ones(len(points[1]), dtype=torch.bool)
    for position, attack in enumerate(gradient_only):
        standing &= attack.run(masked, *points, SEED + position).robust
    fast_attack = gated(build_attack("aa-fast(queries=300)", threat))
    fast = fast_attack.run(masked, *points, SEED)
    gate = fast.notes["gate"]
    assert gate["fired"] and any(flag.startswith("gradients") for flag in gate["flags"])
    assert int(standing.sum()) >= len(standing) // 2     # the gradient stages alone are fooled
    assert int(fast.robust.sum()) <= int(standing.sum()) // 2


def gated(attack):
    """The attack with the masking gate the evaluation engine hands it."""
    from robeval.evaluate import gated as engine_gated

    return engine_gated([attack])[0]


def test_without_its_gate_it_refuses_to_run(model, points):
    with pytest.raises(RobevalError, match="no masking gate"):
        build_attack("aa-fast(iters=2)", ThreatModel(EPS)).run(model, *points, SEED)


def test_options_and_errors():
    threat = ThreatModel(EPS)
    assert [a.spec for a in parse_suite("aa-fast, AA_fast(iters=20,targets=2,queries=500)", threat)] == [
        "aa-fast", "aa-fast(iters=20,targets=2,queries=500)"]
    for spec, words in [("aa-fast(restarts=2)", ["no option restarts", "iters, targets, queries"]),
                        ("aa-fast(targets=0)", ["targets=0", "positive integer"])]:
        with pytest.raises(RobevalError) as error:
            build_attack(spec, threat)
        assert all(word in str(error.value) for word in words)


@pytest.mark.parametrize("mode", ["cascade", "independent"])
def test_is_one_row_of_the_evaluation_in_either_mode(trained_cifar_run, cifar10_mini_dir, tmp_path, mode):
    from robeval.evaluate import EvalConfig, evaluate
    from robeval.results import ResultsStore
    from robeval.sources import load_source

    config = EvalConfig(suite="pgd10,aa-fast(iters=10,queries=50)", n=48, batch_size=48, mode=mode,
                        data_dir=str(cifar10_mini_dir), checks=False)
    result = evaluate(load_source(str(trained_cifar_run)), config, ResultsStore(tmp_path / "db.sqlite"),
                      progress=False, log=lambda _: None)
    accuracy = result.summary["accuracy"]
    assert list(accuracy.index) == ["clean", "pgd10", "aa-fast(iters=10,queries=50)", "worst case"]
    assert accuracy["aa-fast(iters=10,queries=50)"] <= accuracy["clean"]
    assert accuracy["worst case"] <= accuracy["pgd10"]
    samples = result.store.per_sample(result.run_id)
    attacked = samples["outcome_aa-fast(iters=10,queries=50)"] != "skipped"
    expected = samples["clean_correct"] if mode == "independent" else samples["outcome_pgd10"] == "robust"
    assert attacked.equals(expected)
