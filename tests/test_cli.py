"""The command line: thin over the library, one-line errors, files where the README says."""

from __future__ import annotations

import pytest
import yaml

from robeval.cli import history_table, main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_train_command_writes_a_run_folder_and_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "--preset", "ci-small", "--epochs", "1",
                              "--train-subset", "256", "--val-size", "100",
                              "--activation", "softplus", "--eps", "4/255", "--lr", "0.02",
                              "--milestones", "5,8", "--out", str(out), "--quiet")
    assert code == 0
    assert {"config.yaml", "last.pt", "best.pt", "history.jsonl"} <= {p.name for p in out.iterdir()}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["activation"] == "softplus"
    assert config["adversary"]["eps"] == pytest.approx(4 / 255)
    assert config["optim"]["milestones"] == [5, 8] and config["optim"]["lr"] == 0.02
    assert "val_pgd_acc" in stdout and "best checkpoint" in stdout


@pytest.mark.slow
def test_default_run_folder_is_under_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys, "train", "--preset", "ci-small", "--epochs", "1",
                              "--train-subset", "128", "--val-size", "64", "--quiet",
                              "--smooth-grad", "attacker")
    assert code == 0
    runs = list((tmp_path / "checkpoints").iterdir())
    assert [p.name for p in runs] == ["digits-cnn-small-relu-sg-attacker-pgd-s0"]


@pytest.mark.parametrize("args,message", [
    (["--eps", "8"], "did you mean 8/255"),
    (["--activation", "swishy"], "unknown activation 'swishy'; known:"),
    (["--model", "resnet7"], "unknown model 'resnet7'; known:"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar10 not found: put"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
])
def test_bad_input_is_one_line_on_stderr_with_exit_code_2(tmp_path, capsys, args, message):
    code, stdout, stderr = run_cli(capsys, "train", "--out", str(tmp_path / "x"), *args)
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


def test_list_shows_the_registries(capsys):
    code, stdout, _ = run_cli(capsys, "train", "--list")
    assert code == 0
    assert "ci-small" in stdout and "wrn-D-W" in stdout and "smoothrelu" in stdout
    assert "digits" in stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--colour", "red"], "error: no such option '--colour'"),
    (["train", "--seed", "²"], "error: invalid value for '--seed': '²' is not a valid integer"),
    (["attack", "run", "--n", "2.5"], "error: invalid value for '--n'"),
    (["attack"], "error: missing argument 'MODEL'"),
])
def test_command_line_mistakes_are_one_line_naming_the_help(capsys, args, message):
    code, _, stderr = run_cli(capsys, *args)
    assert code == 2 and stderr.startswith(message) and stderr.strip().count("\n") == 0, stderr
    assert f"(options: robeval {args[0]} -h)" in stderr


def test_history_table_reads_rows_written_before_craft_clean_acc():
    old = {"epoch": 1, "loss": 2.0, "train_clean_acc": 0.105, "train_adv_acc": 0.507,
           "val_clean_acc": 0.2, "val_pgd_acc": 0.1, "lr": 0.1, "time": 1.0}
    new = {**old, "epoch": 2, "train_clean_acc": 0.6, "train_adv_acc": 0.5, "craft_clean_acc": 0.4}
    assert "craft_clean_acc" not in history_table([old])
    lines = history_table([old, new]).splitlines()
    assert "craft_clean_acc" in lines[0]
    assert lines[1].split()[4] == "-" and lines[2].split()[4] == "40.0"
