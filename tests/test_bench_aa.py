"""The AutoAttack benchmark's zoo definition and its planted masked model."""

from __future__ import annotations

import sys

import torch
from torch import nn

from robeval.attacks import ThreatModel, build_attack
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import bench_aa  # noqa: E402


def linear_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()


def images(n: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(2)) / 255


def test_masked_model_classifies_as_its_base_but_has_no_input_gradient():
    base = linear_model()
    masked = bench_aa.QuantisedZeroGradient(base)
    x = images().requires_grad_(True)
    assert torch.equal(masked(x).argmax(1), base(x).argmax(1))
    (grad,) = torch.autograd.grad(masked(x).sum(), x)
    assert torch.count_nonzero(grad) == 0


def test_masked_model_fools_gradient_attacks_but_not_a_black_box_one():
    base = linear_model()
    masked = bench_aa.QuantisedZeroGradient(base)
    x = images()
    with torch.no_grad():
        y = base(x).argmax(1)
    threat = ThreatModel(16 / 255)
    pgd, square = build_attack("pgd20", threat), build_attack("square(queries=300)", threat)
    broken_on_base = (~pgd.run(base, x, y, 0).robust).sum()
    broken_by_pgd = (~pgd.run(masked, x, y, 0).robust).sum()
    broken_by_square = (~square.run(masked, x, y, 0).robust).sum()
    assert broken_on_base >= 32             # the base model is easy to break with gradients
    assert broken_by_pgd <= broken_on_base // 4   # behind the mask gradients find (almost) nothing
    assert broken_by_square >= broken_on_base // 2  # a black-box attack still does


def test_zoo_has_standard_and_adversarial_models_of_two_families_and_trains_with_robeval():
    methods = {(m.arch, m.method) for m in bench_aa.ZOO}
    assert {("cnn-small", "standard"), ("cnn-small", "pgd"), ("preact-resnet18", "standard"),
            ("preact-resnet18", "pgd")} <= methods
    assert len({m.activation for m in bench_aa.ZOO if m.arch == "cnn-small"}) >= 2
    assert all(m.n >= 100 for m in bench_aa.ZOO)
    assert bench_aa.MASKED_BASE in {m.name for m in bench_aa.ZOO if m.method == "pgd"}
    model = next(m for m in bench_aa.ZOO if m.method == "pgd")
    command = bench_aa.train_command(model, "DATA", REPO_ROOT / "out", "cpu")
    assert command[1:4] == ["-m", "robeval", "train"] and "--resume" in command
    assert command[command.index("--eps") + 1] == "8/255"
    assert command[command.index("--epochs") + 1] == str(model.epochs)


def test_masked_model_is_attacked_in_the_batches_of_its_base_and_unknown_names_in_the_default():
    base = next(m for m in bench_aa.ZOO if m.name == bench_aa.MASKED_BASE)
    assert bench_aa.cpu_batch(bench_aa.MASKED_NAME) == base.cpu_batch
    slow = next(m for m in bench_aa.ZOO if m.arch == "preact-resnet18")
    assert bench_aa.cpu_batch(slow.name) == slow.cpu_batch < bench_aa.CPU_BATCH
    assert slow.n % slow.cpu_batch == 0
    assert bench_aa.cpu_batch("not-in-the-zoo") == bench_aa.CPU_BATCH
