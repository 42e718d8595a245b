"""Hostile input through the command line: one-line errors naming the fix, finished work kept.

Every case runs `robeval.cli.main` in-process, as the installed command does, so an exception
that is not a `RobevalError` escapes as the traceback a user would see and fails the case. Bad
settings are refused before any work; the few cases that need work train or evaluate on 128
embedded digits for one epoch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

from robeval import checkpoints, robustbench_compat, sources
from robeval.check import FORMAT
from robeval.cli import main
from robeval.errors import RobevalError
from robeval.models import build_model
from robeval.results import ResultsStore

TRAIN = ["--preset", "ci-small", "--epochs", "1", "--train-subset", "128", "--val-size", "64",
         "--diagnostics-batch", "0", "--val-pgd-steps", "1", "--quiet"]
ATTACK = ["--suite", "fgsm", "--n", "32", "--batch-size", "16", "--no-checks", "--quiet"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `robeval ARGS` (an escaping exception fails the test)."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in a run folder."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def store_state(db: Path) -> list[tuple]:
    """Every run of the store with its status and committed batches."""
    with ResultsStore(db, readonly=True) as store:
        runs = store.runs()
    return [tuple(row) for row in runs[["id", "key", "status", "batches"]].itertuples(index=False)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A finished one-epoch training run and a finished evaluation of it in a store."""
    root = tmp_path_factory.mktemp("hostile")
    run, db = root / "run", root / "store.sqlite"
    assert main(["train", *TRAIN, "--out", str(run)]) == 0
    assert main(["attack", str(run), *ATTACK, "--db", str(db)]) == 0
    text_file = root / "a-file.txt"
    text_file.write_text("not a folder\n")
    experiment = root / "experiment-{}.yaml"
    for name, attack in (("suite", '{suite: "pgd(", n: 16}'), ("eps", "{suite: fgsm, eps: 8}"),
                         ("good", "{suite: fgsm, n: 16}")):
        Path(str(experiment).format(name)).write_text(
            f"name: hostile-{name}\n"
            "base: {preset: ci-small, data: {dataset: digits, train_subset: 128, val_size: 64},"
            " epochs: 1}\n"
            "grid: {model.activation: [relu]}\n"
            f"attack: {attack}\n")
    return {"root": root, "run": run, "db": db, "file": text_file,
            "exp_suite": str(experiment).format("suite"), "exp_eps": str(experiment).format("eps"),
            "exp_good": str(experiment).format("good"),
            "run_files": fingerprint(run), "store": store_state(db)}


# --- setups: each writes what its case needs into tmp_path and returns extra substitutions ---

def scalar_section(work, tmp_path):
    (tmp_path / "config.yaml").write_text("preset: ci-small\nmodel: relu\n")
    return {"config": tmp_path / "config.yaml"}


def latin1_config(work, tmp_path):
    (tmp_path / "config.yaml").write_bytes("model: {activation: r\xe9lu}\n".encode("latin-1"))
    return {"config": tmp_path / "config.yaml"}


def copied_run(work, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(work["run"], copy)
    return {"copy": copy}


def corrupt_run_config(work, tmp_path):
    values = copied_run(work, tmp_path)
    (values["copy"] / "config.yaml").write_text("data: {dataset: [digits\n")
    return values


def bare_tensor_last(work, tmp_path):
    values = copied_run(work, tmp_path)
    torch.save(torch.zeros(3), values["copy"] / "last.pt")
    return values


def directory_db(work, tmp_path):
    (tmp_path / "store-folder").mkdir()
    return {"dir": tmp_path / "store-folder"}


def baseline_without_provenance(work, tmp_path):
    baseline = {"format": FORMAT, "experiment": "hostile-good", "check_seed": 0, "cells": {}}
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    return {"baseline": tmp_path / "baseline.json"}


def latin1_baseline(work, tmp_path):
    (tmp_path / "baseline.json").write_bytes(b'{"experiment": "caf\xe9"}')
    return {"baseline": tmp_path / "baseline.json"}


def no_setup(work, tmp_path):
    return {}


CASES = [
    # attack
    ("attack-eps-nan", ["attack", "{run}", *ATTACK, "--db", "{db}", "--eps", "nan"],
     "eps=nan is not a finite number", no_setup),
    ("attack-step-abc", ["attack", "{run}", *ATTACK, "--db", "{db}", "--suite", "pgd10(step=abc)"],
     "step=abc must be a positive number", no_setup),
    ("attack-restarts-abc", ["attack", "{run}", *ATTACK, "--db", "{db}",
                             "--suite", "pgd10(restarts=abc)"],
     "restarts=abc must be a positive integer", no_setup),
    ("attack-pgd0", ["attack", "{run}", *ATTACK, "--db", "{db}", "--suite", "pgd0"],
     "pgdK needs K >= 1", no_setup),
    ("attack-negative-step", ["attack", "{run}", *ATTACK, "--db", "{db}",
                              "--suite", "pgd10(step=-1)"],
     "step=-1 must be a positive number", no_setup),
    ("attack-batch-size-0", ["attack", "{run}", *ATTACK, "--db", "{db}", "--batch-size", "0"],
     "--batch-size must be valid, not '0': input should be 'auto' or input should be greater than "
     "or equal to 1", no_setup),
    ("attack-device-foo", ["attack", "{run}", *ATTACK, "--db", "{db}", "--device", "foo"],
     "unknown device 'foo': use --device auto, cpu", no_setup),
    ("attack-norm-l3", ["attack", "{run}", *ATTACK, "--db", "{db}", "--norm", "l3"],
     "unknown norm 'l3'; known:", no_setup),
    ("attack-eps-above-1", ["attack", "{run}", *ATTACK, "--db", "{db}", "--eps", "8"],
     "did you mean 8/255", no_setup),
    ("attack-unknown-attack", ["attack", "{run}", *ATTACK, "--db", "{db}", "--suite", "pgdx"],
     "unknown attack 'pgdx'; known:", no_setup),
    ("attack-mode", ["attack", "{run}", *ATTACK, "--db", "{db}", "--mode", "both"],
     "unknown mode 'both'", no_setup),
    ("attack-n-0", ["attack", "{run}", *ATTACK, "--db", "{db}", "--n", "0"],
     "--n must be valid, not 0: input should be greater than or equal to 1", no_setup),
    ("attack-db-is-a-folder", ["attack", "{run}", *ATTACK, "--db", "{dir}"],
     "is a folder, not a database file", directory_db),
    ("attack-missing-model", ["attack", "{root}/nothing-here", *ATTACK, "--db", "{db}"],
     "nothing-here", no_setup),
    # train
    ("train-scalar-section", ["train", "--config", "{config}", "--out", "{tmp}/x"],
     "config section 'model' must be a mapping", scalar_section),
    ("train-latin1-config", ["train", "--config", "{config}", "--out", "{tmp}/x"],
     "is not UTF-8 text", latin1_config),
    ("train-out-is-a-file", ["train", *TRAIN, "--out", "{file}"],
     "is a file, not a folder: pass --out with a folder path", no_setup),
    ("train-out-unwritable", ["train", *TRAIN, "--out", "{file}/run"],
     "pass --out with a writable folder", no_setup),
    ("train-subset-0", ["train", *TRAIN, "--train-subset", "0", "--out", "{tmp}/x"],
     "--train-subset must be valid, not 0: input should be greater than or equal to 1", no_setup),
    ("train-subset-negative", ["train", *TRAIN, "--train-subset", "-5", "--out", "{tmp}/x"],
     "--train-subset must be valid, not -5: input should be greater than or equal to 1", no_setup),
    ("train-subset-below-batch", ["train", *TRAIN, "--train-subset", "5", "--out", "{tmp}/x"],
     "lower --batch-size", no_setup),
    ("train-diagnostics-negative", ["train", *TRAIN, "--diagnostics-batch", "-1",
                                    "--out", "{tmp}/x"],
     "--diagnostics-batch must be valid, not -1: input should be greater than or equal to 0", no_setup),
    ("train-eps-nan", ["train", *TRAIN, "--eps", "nan", "--out", "{tmp}/x"],
     "eps=nan is not a finite number", no_setup),
    ("train-resume-corrupt-config", ["train", *TRAIN, "--out", "{copy}", "--resume"],
     "config.yaml is corrupt", corrupt_run_config),
    ("train-resume-bare-tensor", ["train", *TRAIN, "--out", "{copy}", "--resume"],
     "last.pt is not a robeval training state", bare_tensor_last),
    ("train-existing-run", ["train", *TRAIN, "--out", "{copy}"],
     "pass --resume to continue it", copied_run),
    ("train-activation", ["train", *TRAIN, "--activation", "swishy", "--out", "{tmp}/x"],
     "unknown activation 'swishy'", no_setup),
    ("train-device-foo", ["train", *TRAIN, "--device", "foo", "--out", "{tmp}/x"],
     "unknown device 'foo'", no_setup),
    # diagnose
    ("diagnose-pgd-steps-0", ["diagnose", "{run}", "--db", "{db}", "--pgd-steps", "0"],
     "--pgd-steps 0 must be at least 1", no_setup),
    ("diagnose-eps-nan", ["diagnose", "{run}", "--db", "{db}", "--eps", "nan"],
     "eps=nan is not a finite number", no_setup),
    # report
    ("report-out-is-a-file", ["report", "--db", "{db}", "--out", "{file}"],
     "cannot write the report to", no_setup),
    ("report-out-unwritable", ["report", "--db", "{db}", "--out", "{file}/report"],
     "pass --out with a writable folder", no_setup),
    ("report-unknown-run", ["report", "99", "--db", "{db}", "--out", "{tmp}/r"],
     "no run with id 99", no_setup),
    ("report-db-is-a-folder", ["report", "--db", "{dir}", "--out", "{tmp}/r"],
     "is a folder, not a database file", directory_db),
    ("report-db-missing", ["report", "--db", "{tmp}/none.sqlite", "--out", "{tmp}/r"],
     "does not exist: run `robeval attack` first", no_setup),
    ("report-format", ["report", "--db", "{db}", "--out", "{tmp}/r", "--format", "docx"],
     "unknown report format docx", no_setup),
    # run
    ("run-bad-suite", ["run", "{exp_suite}", "--root", "{tmp}/root"], "malformed suite", no_setup),
    ("run-bad-suite-dry-run", ["run", "{exp_suite}", "--root", "{tmp}/root", "--dry-run"],
     "malformed suite", no_setup),
    ("run-eps-8", ["run", "{exp_eps}", "--root", "{tmp}/root"], "did you mean 8/255", no_setup),
    ("run-unknown-experiment", ["run", "no-such-experiment"], "no experiment file", no_setup),
    # check
    ("check-no-provenance", ["check", "{exp_good}", "--baseline", "{baseline}", "--root",
                             "{tmp}/root"],
     "lacks a valid 'provenance' entry: regenerate it with --update", baseline_without_provenance),
    ("check-latin1-baseline", ["check", "{exp_good}", "--baseline", "{baseline}", "--root",
                               "{tmp}/root"],
     "is not UTF-8 text", latin1_baseline),
    ("check-seeds-abc", ["check", "{exp_good}", "--baseline", "{tmp}/b.json", "--update",
                         "--seeds", "abc"],
     "--seeds 'abc' must be comma-separated whole numbers", no_setup),
    ("check-missing-baseline", ["check", "{exp_good}", "--baseline", "{tmp}/b.json"],
     "create it with `robeval check", no_setup),
]


@pytest.mark.parametrize("args, message, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_fix_and_keeps_finished_work(work, tmp_path, capsys,
                                                                       args, message, setup):
    values = {key: value for key, value in work.items() if isinstance(value, (str, Path))}
    values.update(tmp=tmp_path, **setup(work, tmp_path))
    code, _, stderr = cli(capsys, *(arg.format(**values) for arg in args))
    assert code != 0
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert fingerprint(work["run"]) == work["run_files"]
    assert store_state(work["db"]) == work["store"]
    assert not (tmp_path / "root").exists()   # experiments refused before any work


def test_resume_without_a_previous_run_says_it_starts_fresh(tmp_path, capsys):
    code, stdout, _ = cli(capsys, "train", *TRAIN, "--out", tmp_path / "new", "--resume")
    assert code == 0
    assert f"no previous run in {tmp_path / 'new'}: starting fresh" in stdout
    assert (tmp_path / "new" / "last.pt").is_file()


def test_resume_drops_a_half_written_history_line_and_goes_on(work, tmp_path, capsys):
    copy = copied_run(work, tmp_path)["copy"]
    history = copy / "history.jsonl"
    whole = history.read_text()
    history.write_text(whole + whole[: len(whole) // 2])  # a second row cut in the middle
    code, stdout, stderr = cli(capsys, "train", *TRAIN, "--out", copy, "--resume")
    assert code == 0, stderr
    assert "half-written line: dropped it; resuming" in stdout
    assert history.read_text() == whole


def test_unfinished_evaluation_is_refused_unless_asked_for(work, tmp_path, capsys):
    db = tmp_path / "store.sqlite"
    with sqlite3.connect(work["db"]) as source, sqlite3.connect(db) as copy:
        source.backup(copy)   # the committed state, including what is still in the WAL file
    with ResultsStore(db) as store:
        store.reset_run(1)     # back to 'running' with no batches: an evaluation that stopped
    code, _, stderr = cli(capsys, "report", "1", "--db", db, "--out", tmp_path / "r")
    assert code == 2
    assert "run 1 in" in stderr and "did not finish (unfinished: 0/2 batches)" in stderr
    assert "--include-unfinished" in stderr
    code, _, stderr = cli(capsys, "report", "--db", db, "--out", tmp_path / "r")
    assert code == 2 and "no finished evaluation runs" in stderr


# --- data files must not run code ---------------------------------------------------------------

class _PlantedCode:
    """Unpickling this calls os.system: what a crafted data file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", ["attack", "train"])
def test_planted_pickle_in_a_cifar_folder_runs_no_code(work, tmp_path, capsys, command):
    marker, folder = tmp_path / "code-ran", tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    planted = pickle.dumps({b"data": _PlantedCode(marker), b"labels": [0]}, protocol=2)
    for name in ("test_batch", *(f"data_batch_{i}" for i in range(1, 6))):
        (folder / name).write_bytes(planted)
    data = ["--dataset", "cifar10", "--data-dir", tmp_path / "cifar"]
    if command == "attack":
        weights = tmp_path / "cnn.pt"
        torch.save(build_model("cnn-small").net.state_dict(), weights)
        args = ["attack", weights, "--arch", "cnn-small", "--eps", "8/255", *ATTACK,
                "--db", work["db"], *data]
    else:
        args = ["train", *TRAIN, *data, "--out", tmp_path / "run"]
    code, _, stderr = cli(capsys, *args)
    assert not marker.exists()
    assert code == 2 and stderr.count("\n") == 1
    assert "data file" in stderr and "is truncated or corrupt: re-download it" in stderr
    assert store_state(work["db"]) == work["store"]


# --- reports: finished runs only, read-only stores, no partial files -----------------------------

def store_copy(work, tmp_path) -> Path:
    """A copy of the fixture's store (its committed state, including what is in the WAL)."""
    db = tmp_path / "store.sqlite"
    with sqlite3.connect(work["db"]) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    return db


def main_table_rows(report_md: Path) -> list[str]:
    """The data rows of the first table in report.md."""
    rows = []
    for line in report_md.read_text().splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break   # the first table ended
    return rows[2:]


def test_unfinished_runs_are_shown_only_on_request_and_marked_in_every_row(work, tmp_path, capsys):
    db = store_copy(work, tmp_path)
    assert cli(capsys, "attack", work["run"], *ATTACK, "--suite", "pgd2", "--db", db)[0] == 0
    with sqlite3.connect(db) as connection:   # run 2 stopped after its first batch
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("DELETE FROM batches WHERE run_id = 2 AND batch_index = 1")
        connection.execute("UPDATE runs SET status = 'running', finished_at = NULL WHERE id = 2")
    code, _, stderr = cli(capsys, "report", "--db", db, "--out", tmp_path / "plain", "--format", "md")
    assert code == 0, stderr
    rows = main_table_rows(tmp_path / "plain" / "report.md")
    assert len(rows) == 1 and "unfinished" not in rows[0]
    code, _, stderr = cli(capsys, "report", "--db", db, "--out", tmp_path / "all", "--format", "md,tex",
                          "--include-unfinished")
    assert code == 0, stderr
    rows = main_table_rows(tmp_path / "all" / "report.md")
    assert len(rows) == 2   # names are literal Markdown: the marker's brackets are escaped
    assert [r"\[unfinished: 1/2 batches\]" in row for row in rows] == [False, True]
    assert "[unfinished: 1/2 batches]" in (tmp_path / "all" / "tables.tex").read_text()


def test_reading_a_store_writes_nothing(work, tmp_path, capsys):
    db = store_copy(work, tmp_path)
    with sqlite3.connect(db) as connection:   # a store as a plain file, as when copied around
        connection.execute("PRAGMA journal_mode = DELETE")
    before = db.read_bytes()
    code, _, stderr = cli(capsys, "report", "--db", db, "--out", tmp_path / "r", "--format", "md")
    assert code == 0, stderr
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "store.sqlite"]   # no -wal, -shm
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    code, _, stderr = cli(capsys, "report", "--db", empty, "--out", tmp_path / "r2")
    assert code == 2 and "is empty or not a results store" in stderr
    assert empty.stat().st_size == 0
    with ResultsStore(db, readonly=True) as store, pytest.raises(RobevalError, match="read-only"):
        store.finish_run(1)


KILL_AT_FIRST_WRITE = """
import builtins, io, os, signal, sys
from robeval.cli import main
out = os.path.abspath(sys.argv[1]) + os.sep

class KilledMidWrite:
    # A file under the report folder: its first write lands half its bytes, then SIGKILL.
    def __init__(self, file):
        self.file = file
    def write(self, data):
        self.file.write(bytes(data)[: len(data) // 2])
        self.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self.file, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc_info):
        self.file.close()

def opener(real):
    def open_(file, mode="r", *args, **kwargs):
        handle = real(file, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fspath(file)
        writes = any(flag in mode for flag in "wax+")
        return KilledMidWrite(handle) if writes and os.path.abspath(path).startswith(out) else handle
    return open_

builtins.open, io.open = opener(builtins.open), opener(io.open)
sys.exit(main(["report", "--db", sys.argv[2], "--out", sys.argv[1]]))
"""


def whole(path: Path) -> bool:
    """Whether an output file is complete (not empty, not cut short)."""
    data = path.read_bytes()
    if path.suffix == ".pdf":   # the trailer, with or without a final line break
        return data.rstrip(b"\r\n").endswith(b"%%EOF")
    ends = {".png": b"IEND\xaeB`\x82", ".md": b"\n", ".tex": b"\n"}
    return bool(data) and data.endswith(ends[path.suffix])


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def kill_report(db: Path, out: Path) -> int:
    """Run `robeval report` in a subprocess that SIGKILLs itself in its first write of a file."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILL_AT_FIRST_WRITE, str(out), str(db)],
                          env=env, capture_output=True, timeout=300).returncode


@pytest.mark.slow
def test_a_report_killed_at_its_first_write_leaves_no_partial_file(work, tmp_path, capsys):
    db = store_copy(work, tmp_path)
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    assert kill_report(db, fresh) == -signal.SIGKILL
    assert outputs(fresh) == {}
    assert cli(capsys, "report", "--db", db, "--out", existing)[0] == 0
    complete = outputs(existing)
    assert {"report.md", "report.pdf", "tables.tex", "activations.png"} <= set(complete)
    assert all(whole(existing / name) for name in complete)
    assert kill_report(db, existing) == -signal.SIGKILL
    assert outputs(existing) == complete   # the old report, whole, until a new file is complete
    assert cli(capsys, "report", "--db", db, "--out", existing, "--format", "md")[0] == 0
    assert not list(existing.glob(".*.tmp"))   # the killed run's temporary is cleaned up
    assert all(whole(existing / name) for name in outputs(existing))


# --- a full disk ---------------------------------------------------------------------------------

class _FullDisk:
    """A file whose write stores half the bytes and then fails, as on a full disk."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        self.handle.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.close()


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_good_epoch_and_resume_continues(tmp_path, capsys, monkeypatch):
    names, last_writes = {}, []
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen

    def mkstemp(*args, **kwargs):
        handle, name = real_mkstemp(*args, **kwargs)
        names[handle] = Path(name).name
        return handle, name

    def fdopen(handle, *args, **kwargs):
        file = real_fdopen(handle, *args, **kwargs)
        if names.pop(handle, "").startswith(".last.pt."):
            last_writes.append(handle)
            if len(last_writes) == 2:   # the disk fills up while epoch 2 is saved
                return _FullDisk(file)
        return file

    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(checkpoints.os, "fdopen", fdopen)
    out = tmp_path / "run"
    code, _, stderr = cli(capsys, "train", *TRAIN, "--epochs", "2", "--out", out)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "cannot save epoch 2" in stderr and "No space left on device" in stderr
    assert "rerun with --resume to continue after epoch 1" in stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    code, stdout, stderr = cli(capsys, "train", *TRAIN, "--epochs", "2", "--out", out, "--resume")
    assert code == 0, stderr
    assert f"resuming {out} after epoch 1" in stdout
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    assert [row["epoch"] for row in checkpoints.read_jsonl(out / "history.jsonl")] == [1, 2]


def test_an_evaluation_on_a_full_disk_says_so_and_the_rerun_resumes(work, tmp_path, capsys,
                                                                   monkeypatch):
    db, batches = tmp_path / "store.sqlite", []
    real = ResultsStore._insert_batch_rows

    def fill_up(self, run_id, batch_index, *args):
        batches.append(batch_index)
        if len(batches) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, run_id, batch_index, *args)

    monkeypatch.setattr(ResultsStore, "_insert_batch_rows", fill_up)
    code, _, stderr = cli(capsys, "attack", work["run"], *ATTACK, "--db", db)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "is full (database or disk is full): free space and rerun the same command" in stderr
    monkeypatch.undo()
    code, stdout, stderr = cli(capsys, "attack", work["run"], *ATTACK, "--db", db)
    assert code == 0, stderr
    assert "resuming: 1 of 2 batches already in" in stdout


# --- checkpoints loaded by robustbench ------------------------------------------------------------

def test_robustbench_loads_are_weights_only_whatever_torch_defaults_to(tmp_path, monkeypatch):
    marker, model_dir = tmp_path / "code-ran", tmp_path / "models"
    planted = model_dir / "cifar10" / "Linf" / "Chen2020Adversarial.pt_m0.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"state_dict": _PlantedCode(marker)}, planted)
    original_load = torch.load

    def load_model(name, model_dir, dataset, threat_model):
        # robustbench's ensemble loop loads each member with a bare torch.load; an older torch
        # defaults to weights_only=False, which is what this passes
        member = Path(model_dir) / dataset / threat_model / f"{name}.pt_m0.pt"
        return torch.load(member, map_location="cpu", weights_only=False)

    monkeypatch.setattr(robustbench_compat, "import_robustbench",
                        lambda: types.SimpleNamespace(load_model=load_model))
    with pytest.raises(RobevalError, match="robustbench:Chen2020Adversarial: could not download "
                                           "or load") as info:
        sources._download("Chen2020Adversarial", planted, model_dir, "cifar10", "Linf")
    assert "\n" not in str(info.value) and "Weights only load failed" in str(info.value)
    assert not marker.exists()
    assert torch.load is original_load
