"""`robeval diagnose` on each kind of model source, with its results in the store."""

from __future__ import annotations

import pytest
import torch

from robeval.cli import main
from robeval.results import ResultsStore
from robeval.robustbench_compat import import_robustbench
from robeval.runs import load_model

QUANTITIES = {"R_fgsm", "R_random", "R_pgd", "grad_l1", "grad_l2", "grad_alignment",
              "grad_lipschitz", "loss_gap"}


def diagnose(capsys, db, *args, n: int = 24) -> tuple[int, str]:
    code = main(["diagnose", *args, "--n", str(n), "--checks", "cheap", "--db", str(db)])
    return code, capsys.readouterr().out


def stored_diagnosis(db) -> dict:
    store = ResultsStore(db)
    runs = store.runs()
    notes = runs.iloc[-1]["notes"]
    assert notes["kind"] == "diagnose" and list(runs.iloc[-1]["attacks"]) == []
    return notes


@pytest.mark.slow
def test_diagnose_a_robeval_checkpoint(trained_cifar_run, cifar10_mini_dir, tmp_path, capsys):
    code, out = diagnose(capsys, tmp_path / "db.sqlite", str(trained_cifar_run), "--data-dir",
                         str(cifar10_mini_dir))
    assert code == 0
    for name in ("R(x,δ), δ = FGSM step", "‖∇ₓL‖₁", "determinism", "logits", "gradients"):
        assert name in out
    notes = stored_diagnosis(tmp_path / "db.sqlite")
    assert set(notes["gradients"]) == QUANTITIES
    assert {"determinism", "logits", "gradients", "fgsm_vs_pgd"} <= set(notes["checks"])
    assert all(check["passed"] for check in notes["checks"].values())


@pytest.mark.slow
def test_diagnose_a_plain_state_dict(trained_cifar_run, cifar10_mini_dir, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(load_model(trained_cifar_run).net.state_dict(), path)
    code, _ = diagnose(capsys, tmp_path / "db.sqlite", str(path), "--arch", "cnn-small",
                       "--eps", "8/255", "--dataset", "cifar10", "--data-dir",
                       str(cifar10_mini_dir))
    assert code == 0
    assert stored_diagnosis(tmp_path / "db.sqlite")["gradients"]["grad_l1"]["n"] == 24


@pytest.mark.slow
def test_diagnose_a_robustbench_model(cifar10_mini_dir, tmp_path, capsys):
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name = "Sehwag2021Proxy_R18"
    torch.manual_seed(0)
    model = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]()
    file = tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt"
    file.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, file)
    code, out = diagnose(capsys, tmp_path / "db.sqlite", f"robustbench:{name}", "--model-dir",
                         str(tmp_path / "models"), "--data-dir", str(cifar10_mini_dir), n=8)
    assert code == 0 and "checks flagged" in out
    assert stored_diagnosis(tmp_path / "db.sqlite")["gradients"]


@pytest.mark.slow
def test_attack_stores_the_cheap_checks_with_the_run(trained_cifar_run, cifar10_mini_dir,
                                                     tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    assert main(["attack", str(trained_cifar_run), "--suite", "fgsm", "--n", "64",
                 "--data-dir", str(cifar10_mini_dir), "--db", str(db), "--quiet"]) == 0
    assert "gradient-masking checks passed" in capsys.readouterr().out
    checks = ResultsStore(db).runs().iloc[0]["notes"]["checks"]
    assert {"determinism", "logits", "gradients"} <= set(checks)
    for check in checks.values():
        assert check["explanation"] and isinstance(check["evidence"], dict)


@pytest.mark.parametrize("args,message", [(["--checks", "nope"], "unknown")])
def test_diagnose_bad_input(trained_cifar_run, cifar10_mini_dir, tmp_path, capsys, args, message):
    code = main(["diagnose", str(trained_cifar_run), "--n", "8", "--data-dir",
                 str(cifar10_mini_dir), "--db", str(tmp_path / "db.sqlite"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
