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


def _row(name: str, identity: str | None, n: int, aa: float) -> dict:
    return {"model": name, "checkpoint_hash": identity, "n": n, "aa": aa}


def test_rows_are_kept_per_model_until_its_checkpoint_changes(tmp_path):
    from argparse import Namespace

    base = next(m for m in bench_aa.ZOO if m.name == bench_aa.MASKED_BASE)
    other = next(m for m in bench_aa.ZOO if m.name != base.name and m.quick)
    for model in (base, other):
        (tmp_path / "zoo" / model.name).mkdir(parents=True)
        (tmp_path / "zoo" / model.name / "best.pt").write_bytes(model.name.encode())
    identity = {name: bench_aa.current_identity(name, tmp_path)
                for name in (base.name, other.name, bench_aa.MASKED_NAME)}
    assert identity[bench_aa.MASKED_NAME] == bench_aa.masked_identity(identity[base.name])
    args = Namespace(cache=str(tmp_path), fast_suite="aa-fast", quick=False, n=None)
    cpu = torch.device("cpu")

    first = bench_aa.merged_rows([_row(name, identity[name], entry.n, 0.1) for name, entry in
                                  bench_aa.zoo_order(False) if name in identity], args, cpu)
    names = [row["model"] for row in first]
    assert names.index(bench_aa.MASKED_NAME) == names.index(base.name) + 1 and len(names) == 3

    # a later run that measures one model keeps the others' rows
    again = bench_aa.merged_rows([_row(other.name, identity[other.name], other.n, 0.5)], args, cpu)
    assert {row["model"]: row["aa"] for row in again}[other.name] == 0.5 and len(again) == 3

    # a retrained base drops its row and the masked model's, never shows the old numbers
    (tmp_path / "zoo" / base.name / "best.pt").write_bytes(b"retrained")
    assert [row["model"] for row in bench_aa.merged_rows([], args, cpu)] == [other.name]
    # rows on another image count are not shown either
    assert bench_aa.merged_rows([], Namespace(**{**vars(args), "n": other.n + 1}), cpu) == []
