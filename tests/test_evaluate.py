"""The evaluation engine and `robeval attack`: per-sample outcomes, resume, bad input."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from robeval.cli import main
from robeval.errors import RobevalError
from robeval.evaluate import EvalConfig, evaluate
from robeval.results import ResultsStore
from robeval.sources import load_source
from tests.conftest import REPO_ROOT

EPS = 8 / 255


def run_eval(run_dir, data_dir, db, **overrides):
    config = EvalConfig(**{"suite": "fgsm,pgd10", "n": 200, "batch_size": 64,
                           "data_dir": str(data_dir), **overrides})
    return evaluate(load_source(str(run_dir)), config, ResultsStore(db), progress=False,
                    log=lambda _: None)


@pytest.mark.slow
def test_cascade_summary_is_cumulative_and_ends_with_the_worst_case(trained_cifar_run,
                                                                    cifar10_mini_dir, tmp_path):
    result = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / "db.sqlite")
    summary = result.summary
    assert list(summary.index) == ["clean", "fgsm", "pgd10", "worst case"]
    accuracy = summary["accuracy"]
    assert accuracy["clean"] >= accuracy["fgsm"] >= accuracy["pgd10"] == accuracy["worst case"]
    assert 0 < accuracy["pgd10"] < accuracy["clean"]
    assert (summary["ci_low"] <= accuracy).all() and (accuracy <= summary["ci_high"]).all()
    assert summary.loc["clean", "n"] == 200
    samples = result.store.per_sample(result.run_id)
    assert len(samples) == 200 and list(samples["index"]) == list(range(200))
    # only still-robust points are attacked: what fgsm broke, pgd10 skips
    broken_by_fgsm = samples["outcome_fgsm"] == "broken"
    assert (samples.loc[broken_by_fgsm, "outcome_pgd10"] == "skipped").all()
    misclassified = ~samples["clean_correct"]
    assert (samples.loc[misclassified, "outcome_fgsm"] == "skipped").all()


@pytest.mark.slow
def test_independent_mode_gives_each_attack_its_own_accuracy(trained_cifar_run,
                                                             cifar10_mini_dir, tmp_path):
    result = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / "db.sqlite",
                      mode="independent", suite="fgsm,pgd10,pgd50")
    accuracy = result.summary["accuracy"]
    assert accuracy["fgsm"] >= accuracy["pgd10"] >= accuracy["pgd50"]
    samples = result.store.per_sample(result.run_id)
    attacked = samples["clean_correct"]
    assert (samples.loc[attacked, "outcome_pgd10"] != "skipped").all()


@pytest.mark.slow
def test_same_command_gives_the_same_per_sample_outcomes(trained_cifar_run, cifar10_mini_dir,
                                                         tmp_path):
    frames = []
    for name in ("a", "b"):
        result = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / f"{name}.sqlite",
                          seed=5)
        frames.append(result.store.per_sample(result.run_id))
    assert frames[0].equals(frames[1])


@pytest.mark.slow
def test_rerun_resumes_and_fresh_starts_over(trained_cifar_run, cifar10_mini_dir, tmp_path):
    db = tmp_path / "db.sqlite"
    first = run_eval(trained_cifar_run, cifar10_mini_dir, db)
    again = run_eval(trained_cifar_run, cifar10_mini_dir, db)
    assert again.run_id == first.run_id and again.batches_resumed == 4
    fresh = evaluate(load_source(str(trained_cifar_run)),
                     EvalConfig(suite="fgsm,pgd10", n=200, batch_size=64,
                                data_dir=str(cifar10_mini_dir)),
                     ResultsStore(db), fresh=True, progress=False, log=lambda _: None)
    assert fresh.batches_resumed == 0 and fresh.run_id == first.run_id
    assert fresh.summary.equals(first.summary.assign(seconds=fresh.summary["seconds"]))


def committed_batches(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_outcomes_of_an_uninterrupted_run(
        trained_cifar_run, cifar10_mini_dir, tmp_path):
    args = ["attack", str(trained_cifar_run), "--suite", "fgsm,pgd20", "--n", "600",
            "--batch-size", "20", "--data-dir", str(cifar10_mini_dir), "--quiet"]
    killed_db, straight_db = tmp_path / "killed.sqlite", tmp_path / "straight.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ROBEVAL_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "robeval", *args, "--db", str(killed_db)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while committed_batches(killed_db) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = committed_batches(killed_db)
    assert 2 <= done_at_kill < 30, "the kill must land mid-run"
    assert main([*args, "--db", str(killed_db)]) == 0
    assert main([*args, "--db", str(straight_db)]) == 0
    resumed, straight = ResultsStore(killed_db), ResultsStore(straight_db)
    assert resumed.per_sample(1).equals(straight.per_sample(1))
    assert resumed.summary(1)["accuracy"].equals(straight.summary(1)["accuracy"])


def test_attack_command_prints_a_summary_table(trained_cifar_run, cifar10_mini_dir, tmp_path,
                                               capsys):
    code = main(["attack", str(trained_cifar_run), "--suite", "fgsm", "--n", "64",
                 "--data-dir", str(cifar10_mini_dir), "--db", str(tmp_path / "db.sqlite"),
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    for text in ("clean", "fgsm", "worst case", "95% CI", "time (s)"):
        assert text in out


@pytest.mark.slow
def test_auto_batch_size_on_cpu_is_recorded(trained_cifar_run, cifar10_mini_dir, tmp_path):
    result = run_eval(trained_cifar_run, cifar10_mini_dir, tmp_path / "db.sqlite",
                      batch_size="auto", n=300, suite="fgsm")
    assert result.store.run_record(result.run_id).batch_size == 256


@pytest.fixture(scope="module")
def cifar100_state_dict(tmp_path_factory):
    from robeval.models import build_model

    path = tmp_path_factory.mktemp("sd") / "resnet18_c100.pt"
    torch.save(build_model("cnn-small", num_classes=100).net.state_dict(), path)
    return path


@pytest.mark.parametrize("extra,message", [
    (["--suite", "pgd10,nope"], "unknown attack 'nope'; known:"),
    (["--suite", "pgd10(step=1"], "malformed suite"),
    (["--eps", "8"], "did you mean 8/255"),
    (["--mode", "sideways"], "unknown mode"),
    (["--batch-size", "lots"], "--batch-size must be valid, not 'lots': input should be 'auto'"),
])
def test_bad_attack_input_is_one_line(trained_cifar_run, cifar10_mini_dir, tmp_path, capsys,
                                      extra, message):
    code = main(["attack", str(trained_cifar_run), "--n", "8", "--data-dir",
                 str(cifar10_mini_dir), "--db", str(tmp_path / "db.sqlite"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_class_count_mismatch_is_refused(cifar100_state_dict, cifar10_mini_dir, tmp_path,
                                         capsys):
    code = main(["attack", str(cifar100_state_dict), "--arch", "cnn-small", "--dataset",
                 "cifar10", "--eps", "8/255", "--data-dir", str(cifar10_mini_dir),
                 "--db", str(tmp_path / "db.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and "100 classes but cifar10 has 10" in err


def test_corrupt_checkpoint_and_unwritable_database_are_refused(trained_cifar_run, tmp_path,
                                                                capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(256))
    assert main(["attack", str(corrupt), "--arch", "resnet18", "--eps", "8/255"]) == 2
    assert "corrupt" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["attack", str(trained_cifar_run), "--db", str(blocker / "db.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "--db" in err and err.count("\n") == 1


def test_engine_refuses_an_unknown_mode_before_loading_data(trained_cifar_run):
    source = load_source(str(trained_cifar_run))
    with pytest.raises(RobevalError, match="unknown mode"):
        evaluate(source, EvalConfig(mode="sideways"), None, progress=False)


class ChunkLimitedAttack:
    """Raises CUDA's out-of-memory error for chunks above a size, like a small GPU would."""

    spec = "limited"

    def __init__(self, limit: int):
        self.limit, self.sizes = limit, []

    def run(self, model, images, labels, seed):
        from robeval.attacks.base import evaluate_examples

        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        self.sizes.append(len(images))
        return evaluate_examples(model, images, images, labels, "linf")


def test_out_of_memory_halves_the_chunk_instead_of_failing():
    from robeval.evaluate import attack_points
    from robeval.models import build_model

    model = build_model("cnn-small", in_channels=1, mean=(0.5,), std=(0.5,)).eval()
    images, labels = torch.rand(40, 1, 32, 32), torch.randint(0, 10, (40,))
    attack = ChunkLimitedAttack(limit=12)
    results, chunk = attack_points(attack, model, images, labels, seed=0, chunk=40)
    assert chunk == 10 and attack.sizes == [10, 10, 10, 10]
    assert sum(len(r.robust) for r in results) == 40
