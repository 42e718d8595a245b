"""Hostile input, round 2: resource bombs and ambiguous specs are refused before any work."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from robeval import api
from robeval.attacks import ThreatModel, parse_suite
from robeval.attacks.guard import GuardedModel
from robeval.cli import main
from robeval.errors import RobevalError
from robeval.models import resolve_arch
from robeval.yamlfile import MAX_EXPANDED_NODES, parse_yaml, read_yaml

ALIAS_BOMB = "\n".join(
    ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    + [f"{chr(ord('a') + i + 1)}: &{chr(ord('a') + i + 1)} [" + ",".join([f"*{chr(ord('a') + i)}"] * 9) + "]"
       for i in range(7)]
    + ["epochs: 1"]) + "\n"


def one_line_error(args: list[str], capsys) -> str:
    """Run the CLI, expect exit code 2 and one `error:` line on stderr; return that line."""
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_an_alias_bomb_is_refused_by_size_not_built(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    with pytest.raises(RobevalError, match="nested aliases"):
        read_yaml(path, "config file")
    # the same aliases within the limit are fine
    assert parse_yaml("a: &a [1, 2]\nb: [*a, *a]\n", "x") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    assert parse_yaml("", "x") is None
    wide = "a: [" + ",".join(["1"] * (MAX_EXPANDED_NODES + 5)) + "]"
    with pytest.raises(RobevalError, match="more than 100,000 values"):
        parse_yaml(wide, "x")


@pytest.mark.parametrize("where", ["train-config", "experiment"])
def test_alias_bombs_reach_no_command(where, tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    if where == "train-config":
        bomb.write_text(ALIAS_BOMB)
        err = one_line_error(["train", "--config", str(bomb), "--out", str(tmp_path / "run")], capsys)
        assert not (tmp_path / "run").exists()
    else:
        bomb.write_text(ALIAS_BOMB.replace("epochs: 1", "description: *h"))
        err = one_line_error(["run", str(bomb), "--dry-run"], capsys)
    assert "nested aliases" in err


def test_an_option_given_twice_is_refused():
    with pytest.raises(RobevalError, match="'restarts' is given twice"):
        parse_suite("pgd10(restarts=1,restarts=2)", ThreatModel(8 / 255))


@pytest.mark.parametrize("arch", ["wrn-34-100000", "wrn-10-400", "wrn-1006-1"])
def test_wide_resnets_beyond_any_published_size_are_refused(arch, tmp_path, capsys):
    with pytest.raises(RobevalError, match="million parameters"):
        resolve_arch(arch)
    err = one_line_error(["train", "--model", arch, "--out", str(tmp_path / "run"), "--epochs", "1"], capsys)
    assert "WRN-70-16" in err
    assert resolve_arch("wrn-70-16") == "wrn-70-16"


def test_a_batch_of_shared_references_is_refused_quickly(cifar10_mini_dir, tmp_path, capsys):
    folder = tmp_path / "data"
    shutil.copytree(Path(cifar10_mini_dir), folder)
    for file in folder.rglob("*"):
        file.chmod(0o644 if file.is_file() else 0o755)
    nested: list = []
    for _ in range(40):
        nested = [nested, nested]   # 2**40 leaves when walked, a few hundred bytes on disk
    batch = {b"data": nested, b"labels": nested, b"batch_label": b"x", b"filenames": []}
    (folder / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch))
    err = one_line_error(["train", "--dataset", "cifar10", "--data-dir", str(folder), "--epochs", "1",
                          "--out", str(tmp_path / "run")], capsys)
    assert "data_batch_1" in err


def test_an_oversized_batch_file_is_refused_before_reading(cifar10_mini_dir, tmp_path, monkeypatch):
    from robeval.data import cifar

    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(RobevalError, match="more than any CIFAR batch"):
        cifar.read_cifar(cifar.CIFAR10, "test", Path(cifar10_mini_dir), "cifar10")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["other-tables", "other-application", "robeval-like-plus"])
def test_a_database_of_another_program_is_refused_without_a_byte_changed(kind, tmp_path, capsys):
    import sqlite3

    from robeval.results import ResultsStore

    path = tmp_path / "theirs.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x)")
        if kind == "other-application":
            db.execute("PRAGMA application_id = 1234")
        if kind == "robeval-like-plus":
            db.execute("CREATE TABLE runs (id INTEGER)")
            db.execute("PRAGMA user_version = 2")
    before = _sha256(path)
    with pytest.raises(RobevalError, match="changes nothing in it"):
        ResultsStore(path)
    err = one_line_error(["report", "--db", str(path), "--out", str(tmp_path / "r")], capsys)
    assert "theirs.sqlite" in err
    assert _sha256(path) == before and not (tmp_path / "theirs.sqlite-wal").exists()


def test_a_store_altered_outside_robeval_gives_one_line(tmp_path, capsys):
    import sqlite3

    from robeval.results import ResultsStore, RunRecord

    path = tmp_path / "s.sqlite"
    with ResultsStore(path) as store:
        record = RunRecord(model="m", checkpoint_hash=None, config={}, dataset="cifar10", n=1, eps=0.1,
                           norm="linf", seed=0, batch_size=1, mode="cascade", attacks=["fgsm"],
                           versions={}, device="cpu", git_commit=None)
        run_id = store.open_run("k", record)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET config = 'not json {' WHERE id = ?", (run_id,))
    with ResultsStore(path) as store:
        with pytest.raises(RobevalError, match="the config of run 1 is not JSON"):
            store.runs()
        with pytest.raises(RobevalError, match="altered outside robeval"):
            store.run_record(run_id)
    one_line_error(["report", "--db", str(path), "--out", str(tmp_path / "r")], capsys)


# --- the Python API: models that break in the middle of the work ------------------------------

class RaisesAfter(nn.Module):
    """A linear model whose forward raises once it has been called `calls` times."""

    def __init__(self, calls: int, error: Exception):
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)
        self.left, self.error = calls, error

    def forward(self, images):
        self.left -= 1
        if self.left < 0:
            raise self.error
        return self.linear(images.flatten(1))


def tensors(n: int = 8):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=generator), torch.arange(n) % 10


@pytest.mark.parametrize("calls", [2, 3])   # after the probes: in the clean pass, in the attack
def test_a_model_raising_mid_evaluation_is_one_line_naming_model_and_cause(calls):
    images, labels = tensors()
    model = RaisesAfter(calls, ValueError("shape mismatch in layer 3"))
    with pytest.raises(RobevalError) as error:
        api.attack_tensors(model, images, labels, eps="8/255", suite="pgd10", log=lambda _: None)
    message = str(error.value)
    assert "RaisesAfter raised ValueError" in message and "shape mismatch in layer 3" in message
    assert "\n" not in message


def test_a_meta_device_model_is_refused_before_any_work():
    with torch.device("meta"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    images, labels = tensors()
    with pytest.raises(RobevalError, match="meta device, without values: load its weights"):
        api.attack_tensors(model, images, labels, eps="8/255", suite="pgd1", log=lambda _: None)


def test_out_of_memory_inside_the_model_is_left_to_the_engine():
    """The guard passes out-of-memory through (the engine halves the batch on it)."""
    model = GuardedModel(RaisesAfter(0, torch.cuda.OutOfMemoryError("CUDA out of memory")), 10, "m")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model(tensors()[0])


@pytest.mark.parametrize("kwargs,message", [
    ({"seed": -1}, "--seed must be valid, not -1"),
    ({"batch_size": "abc"}, "--batch-size must be valid, not 'abc'"),
    ({"batch_size": 2.5}, "--batch-size must be valid, not 2.5"),
])
def test_attack_tensors_holds_its_keywords_to_the_settings_schema(kwargs, message):
    images, labels = tensors()
    model = RaisesAfter(10**6, ValueError())
    with pytest.raises(RobevalError, match=message):
        api.attack_tensors(model, images, labels, eps="8/255", suite="pgd1", log=lambda _: None, **kwargs)


def test_attack_tensors_refuses_what_is_not_a_module():
    images, labels = tensors()
    with pytest.raises(RobevalError, match="model must be a torch.nn.Module, not function"):
        api.attack_tensors(lambda x: x, images, labels, eps="8/255", suite="pgd1")
