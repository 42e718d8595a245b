"""`robeval check`: baselines, honest reruns and planted regressions on a tiny digits experiment."""

from __future__ import annotations

import json

import pytest

from robeval.check import (
    FLOOR,
    CheckResult,
    cell_key,
    compare,
    load_baseline,
    run_check,
    tolerance,
    verdict,
)
from robeval.cli import main
from robeval.errors import RobevalError
from robeval.experiments import load_experiment

TINY = """\
name: {name}
description: one PGD-1 cnn-small on the embedded digits, for the regression-check tests
base:
  preset: ci-small
  data: {{dataset: digits, val_size: 50, train_subset: 512}}
  optim: {{batch_size: 32, optimizer: adam, lr: 0.002, schedule: constant, weight_decay: 0}}
  adversary: {{eps: 16/255}}
  epochs: 2
  device: cpu
  val_pgd_steps: 1
  diagnostics_batch: 0
grid:
  model.activation: [relu]
attack: {{suite: "fgsm,pgd10", n: 150, checks: false}}
report: {{formats: md}}
"""
SEEDS = "0,1"


def write_experiment(folder, name: str = "tiny-regress"):
    """The tiny experiment file in `folder`."""
    path = folder / f"{name}.yaml"
    path.write_text(TINY.format(name=name))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(experiment file, baseline file) with the baseline measured at seeds 0 and 1."""
    folder = tmp_path_factory.mktemp("check")
    experiment = write_experiment(folder)
    baseline = folder / "baselines" / "tiny-regress.json"
    code = main(["check", str(experiment), "--baseline", str(baseline), "--update", "--seeds", SEEDS,
                 "--root", str(folder / "update"), "--quiet"])
    assert code == 0
    return experiment, baseline


def check(tiny, root) -> int:
    experiment, baseline = tiny
    return main(["check", str(experiment), "--baseline", str(baseline), "--root", str(root), "--quiet"])


def rows(output: str) -> dict[str, list[str]]:
    """The check table's rows by metric (single-cell experiment)."""
    table = {}
    for line in output.splitlines():
        if line.startswith("activation=relu"):
            parts = line.split()
            metric = " ".join(parts[1:-8])
            table[metric] = parts[-8:]
    return table


@pytest.mark.slow
def test_update_writes_the_documented_baseline(tiny):
    baseline = json.loads(tiny[1].read_text())
    assert baseline["format"] == "robeval-baseline/1" and baseline["experiment"] == "tiny-regress"
    assert baseline["check_seed"] == 0 and baseline["seeds"] == [0, 1] and baseline["n"] == 150
    assert {"robeval", "torch", "date", "experiment_sha256"} <= set(baseline["provenance"])
    cell = baseline["cells"]["activation=relu"]
    assert list(cell["metrics"]) == ["clean", "fgsm", "pgd10", "worst case"]
    for metric, entry in cell["metrics"].items():
        flags = cell["flags"][metric]
        assert len(flags) == 150 and set(flags) <= {"0", "1"}
        assert entry["value"] == pytest.approx(flags.count("1") / 150)
        assert entry["per_seed"][0] == entry["value"] and len(entry["per_seed"]) == 2
        assert entry["spread"]["range"] == pytest.approx(max(entry["per_seed"]) - min(entry["per_seed"]))
        assert 0 <= entry["discordance"] <= 1


@pytest.mark.slow
def test_honest_rerun_passes(tiny, tmp_path, capsys):
    assert check(tiny, tmp_path / "rerun") == 0
    output = capsys.readouterr().out
    assert "regression check passed" in output
    assert all(row[-1] == "ok" and row[2] == "+0.0" for row in rows(output).values())


@pytest.mark.slow
def test_weaker_pgd_step_is_a_regression(tiny, tmp_path, capsys, monkeypatch):
    import robeval.attacks.pgd as pgd

    original = pgd.eval_step_size
    monkeypatch.setattr(pgd, "eval_step_size",
                        lambda eps, steps: original(eps, steps) / (10 if steps > 1 else 1))
    assert check(tiny, tmp_path / "weak-attack") == 1
    table = rows(capsys.readouterr().out)
    assert table["pgd10"][-1] == "FAIL" and float(table["pgd10"][2]) > 0
    assert table["clean"][-1] == "ok"


@pytest.mark.slow
def test_trainer_without_eps_is_a_regression(tiny, tmp_path, capsys, monkeypatch):
    import robeval.train.loop as loop

    monkeypatch.setattr(loop, "eps_at", lambda config, progress: 0.0)
    assert check(tiny, tmp_path / "eps0") == 1
    output = capsys.readouterr().out
    assert "REGRESSION" in output
    failed = [metric for metric, row in rows(output).items() if row[-1] == "FAIL"]
    assert set(failed) & {"fgsm", "pgd10", "worst case"}
    assert all(float(rows(output)[metric][2]) < 0 for metric in failed)


def test_missing_baseline_says_to_update(tmp_path, capsys):
    experiment = write_experiment(tmp_path)
    code = main(["check", str(experiment), "--baseline", str(tmp_path / "none.json")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "does not exist" in error and "--update" in error


@pytest.fixture
def stub_baseline(tmp_path):
    """A baseline file of the tiny experiment without measurements (nothing is trained)."""
    path = tmp_path / "stub.json"
    path.write_text(json.dumps({"format": "robeval-baseline/1", "experiment": "tiny-regress",
                                "check_seed": 0, "provenance": {}, "cells": {}}))
    return path


def test_baseline_of_another_experiment_is_refused(stub_baseline, tmp_path):
    other = load_experiment(write_experiment(tmp_path, "other-regress"))
    with pytest.raises(RobevalError, match="is for experiment 'tiny-regress'"):
        run_check(other, stub_baseline, tmp_path / "run")


def test_root_with_earlier_runs_is_refused(stub_baseline, tmp_path):
    (tmp_path / "checkpoints" / "tiny-regress" / "old").mkdir(parents=True)
    with pytest.raises(RobevalError, match="trains afresh"):
        run_check(load_experiment(write_experiment(tmp_path)), stub_baseline, tmp_path)


def test_cell_key_drops_the_seed():
    assert cell_key("activation=relu,seed=3") == "activation=relu"
    assert cell_key("seed=0") == "base"


# --- the rule, on synthetic flags -----------------------------------------------------------------

def synthetic_baseline(flags: list[bool], std: float, discordance: float) -> dict:
    """A one-cell, one-metric baseline whose check-seed flags are `flags`."""
    value = sum(flags) / len(flags)
    entry = {"value": value, "per_seed": [value], "spread": {"std": std, "range": 2 * std},
             "discordance": discordance}
    bits = "".join("1" if f else "0" for f in flags)
    return {"cells": {"c": {"metrics": {"clean": entry}, "flags": {"clean": bits}}}}


def test_identical_flags_pass():
    flags = [i % 2 == 0 for i in range(400)]
    (result,) = compare(synthetic_baseline(flags, 0.0, 0.2), {"c": {"clean": flags}})
    assert result.passed and result.lost == result.gained == 0


def test_seed_like_noise_passes_but_systematic_shift_fails():
    flags = [i % 2 == 0 for i in range(400)]
    baseline = synthetic_baseline(flags, 0.02, 0.2)
    noisy = [not f if i % 5 == 0 else f for i, f in enumerate(flags)]      # 80 flips, balanced
    (noise,) = compare(baseline, {"c": {"clean": noisy}})
    assert noise.passed and noise.lost == noise.gained == 40
    shifted = [f or i % 20 == 1 for i, f in enumerate(flags)]              # 20 gained, none lost
    (shift,) = compare(baseline, {"c": {"clean": shifted}})
    assert shift.significant and not shift.passed
    assert shift.tolerance < tolerance(baseline["cells"]["c"]["metrics"]["clean"], 400, 80)
    assert "REGRESSION" in verdict(CheckResult("x", 0, [shift]))


def test_small_significant_move_within_the_floor_passes():
    flags = [i % 2 == 0 for i in range(1000)]
    shifted = [f or i in (1, 3, 5, 7, 9, 11, 13, 15, 17, 19) for i, f in enumerate(flags)]  # +1.0 pp
    (result,) = compare(synthetic_baseline(flags, 0.0, 0.2), {"c": {"clean": shifted}})
    assert result.significant and abs(result.delta) < FLOOR and result.passed


def test_different_test_set_size_is_an_error():
    baseline = synthetic_baseline([True] * 10, 0.0, 0.1)
    with pytest.raises(RobevalError, match="--update"):
        compare(baseline, {"c": {"clean": [True] * 12}})


def test_load_baseline_rejects_other_files(tmp_path):
    experiment = load_experiment(write_experiment(tmp_path))
    (tmp_path / "x.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(RobevalError, match="not a robeval baseline"):
        load_baseline(tmp_path / "x.json", experiment)
