"""Cost accounting: image-passes counted at the model boundary, stored per run and attack."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from torch import nn

from robeval.attacks.cost import PassCounter
from robeval.cli import main
from robeval.evaluate import EvalConfig, evaluate
from robeval.results import ResultsStore
from robeval.sources import load_source


def run_eval(run_dir, data_dir, db, **overrides):
    config = EvalConfig(**{"suite": "fgsm", "n": 96, "batch_size": 64, "data_dir": str(data_dir),
                           "checks": False, **overrides})
    return evaluate(load_source(str(run_dir)), config, ResultsStore(db), progress=False,
                    log=lambda _: None)


def test_counter_counts_images_per_forward_and_per_backward_through_the_output():
    counter = PassCounter(nn.Linear(4, 3))
    x = torch.randn(5, 4, requires_grad=True)
    with torch.no_grad():
        counter(x[:2])
    assert counter.take() == (2, 0)
    out = counter(x)
    torch.autograd.grad(out[:1, 0].sum(), x, retain_graph=True)  # a loss on one row: still 5
    torch.autograd.grad(out.sum(), x)
    counter(x[:3])  # a forward whose output is never differentiated: no backward
    assert counter.take() == (8, 10)
    assert counter.take() == (0, 0)


def test_fgsm_costs_its_forwards_and_one_backward_per_attacked_image(trained_cifar_run,
                                                                   cifar10_mini_dir, tmp_path):
    result = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / "db.sqlite")
    summary = result.summary
    attacked = int(summary.loc["clean", "correct"])
    assert 0 < attacked < 96
    # the clean classification: one forward per image, counted on its own row
    assert summary.loc["clean", ["forward_passes", "backward_passes"]].tolist() == [96, 0]
    # FGSM: forward + backward at the clean image, forward at the step's iterate (PGD's
    # margin check), forward of the final evaluation of the returned example, and the engine's
    # own forward that verifies it
    assert summary.loc["fgsm", "forward_passes"] == 4 * attacked
    assert summary.loc["fgsm", "backward_passes"] == attacked
    assert summary.loc["fgsm", "passes_per_image"] == pytest.approx(5 * attacked / 96)
    assert summary.loc["worst case", "forward_passes"] == 4 * attacked
    runs = result.store.runs()
    assert runs.loc[0, "forward_passes"] == 4 * attacked
    assert runs.loc[0, "passes_per_image"] == pytest.approx(5 * attacked / 96)


def pgd_expected_passes(iterations: list[int], steps: int) -> tuple[int, int]:
    """PGD-K, one restart, early exit: what the loop spends, from each point's iterations.

    A point broken at iterate j (j = 0 is the random start) is in the batch for the forwards at
    steps 0..j; robust points stay for all K + 1. The gradient at step s is taken over the whole
    batch of that step whenever some point of it is still correctly classified, and s < K.
    """
    forward = sum(j + 1 for j in iterations) + 2 * len(iterations)  # + evaluation, verification
    backward = 0
    for step in range(steps):
        in_batch = sum(j >= step for j in iterations)
        if any(j > step for j in iterations):
            backward += in_batch
    return forward, backward


def test_pgd_with_early_exit_costs_what_its_per_sample_iterations_say(trained_cifar_run,
                                                                    cifar10_mini_dir, tmp_path):
    result = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / "db.sqlite", suite="pgd10",
                      batch_size=96)
    samples = result.store.per_sample(result.run_id)
    iterations = samples["iterations_pgd10"].dropna().astype(int).tolist()
    assert 0 < min(iterations) and max(iterations) == 10 and len(set(iterations)) > 2
    expected = pgd_expected_passes(iterations, 10)
    summary = result.summary
    assert (summary.loc["pgd10", "forward_passes"], summary.loc["pgd10", "backward_passes"]) == expected
    # early exit is cheaper than running every point for all ten steps
    assert expected[1] < 10 * len(iterations)


def test_a_pyautoattack_attack_is_counted_without_its_cooperation(trained_cifar_run,
                                                                cifar10_mini_dir, tmp_path):
    result = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / "db.sqlite", n=32,
                      batch_size=32, suite="apgd-ce(iters=5)")
    summary = result.summary
    attacked = int(summary.loc["clean", "correct"])
    row = summary.loc["apgd-ce(iters=5)"]
    assert attacked > 0
    # pyautoattack's APGD keeps every point for all iterations: at least 5 gradients each
    assert row["backward_passes"] >= 5 * attacked
    assert row["forward_passes"] > row["backward_passes"]


def test_attack_command_prints_passes_per_image(trained_cifar_run, cifar10_mini_dir, tmp_path,
                                               capsys):
    code = main(["attack", str(trained_cifar_run), "--suite", "fgsm", "--n", "64",
                 "--data-dir", str(cifar10_mini_dir), "--db", str(tmp_path / "db.sqlite"),
                 "--quiet", "--no-checks"])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if "accuracy (%)" in line)
    assert "passes/image" in header and "fwd/image" in header and "bwd/image" in header
    clean = next(line for line in out.splitlines() if line.startswith("clean"))
    assert clean.split()[-3:] == ["1.0", "1.0", "0.0"]


@pytest.mark.slow
def test_counts_survive_a_resume(trained_cifar_run, cifar10_mini_dir, tmp_path):
    straight = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / "a.sqlite",
                        suite="fgsm,pgd5", n=160)
    db = tmp_path / "b.sqlite"
    first = run_eval(trained_cifar_run, cifar10_mini_dir, db, suite="fgsm,pgd5", n=160)
    with sqlite3.connect(db) as connection:  # as if interrupted after the first batch
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("DELETE FROM batches WHERE batch_index > 0")
    resumed = run_eval(trained_cifar_run, cifar10_mini_dir, db, suite="fgsm,pgd5", n=160)
    assert resumed.run_id == first.run_id and resumed.batches_resumed == 1
    columns = ["forward_passes", "backward_passes", "passes_per_image"]
    assert resumed.summary[columns].equals(straight.summary[columns])
    assert (resumed.summary.loc[["fgsm", "pgd5"], "backward_passes"] > 0).all()
