"""The trainer never saves or reports a model poisoned by nan or inf.

Non-finite or out-of-range hyper-parameters are refused before any work, from the command line,
a YAML file or a TrainConfig built in code; a run that turns non-finite mid-training stops with
a one-line error and keeps its last finite checkpoint, from which --resume continues.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import types
import typing

import pytest
import torch
from torch import nn

from robeval.checkpoints import read_jsonl
from robeval.cli import main
from robeval.distributed import World
from robeval.errors import PeerError, RobevalError
from robeval.models import build_model
from robeval.train import OptimConfig, TrainConfig, loop, resolve_config, train
from robeval.train.config import SECTIONS, config_from_dict

TRAIN = ["--preset", "ci-small", "--epochs", "1", "--train-subset", "128", "--val-size", "64",
         "--diagnostics-batch", "0", "--val-pgd-steps", "1", "--method", "standard", "--quiet"]
TINY = {"data": {"train_subset": 128, "val_size": 64}, "adversary": {"method": "standard"},
        "optim": {"batch_size": 32, "schedule": "constant"}, "diagnostics_batch": 0,
        "val_pgd_steps": 1, "epochs": 2}
STEPS_PER_EPOCH = 128 // 32


def cli(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of `robeval ARGS` (an escaping exception fails the test)."""
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("option,value,message", [
    ("--lr", "nan", "--lr must be valid, not nan: input should be a finite number"),
    ("--lr", "inf", "--lr must be valid, not inf: input should be a finite number"),
    ("--lr", "-0.1", "--lr must be valid, not -0.1: input should be greater than 0"),
    ("--weight-decay", "nan", "--weight-decay must be valid, not nan: input should be a finite number"),
    ("--momentum", "nan", "--momentum must be valid, not nan: input should be a finite number"),
    ("--gamma", "nan", "--gamma must be valid, not nan: input should be a finite number"),
    ("--label-smoothing", "1", "--label-smoothing must be valid, not 1.0: input should be less than 1"),
    ("--warmup-epochs", "inf", "--warmup-epochs must be valid, not inf: input should be a finite number"),
    ("--milestones", "3,nan", "--milestones must be a whole number (e.g. 10), not nan"),
])
def test_cli_refuses_bad_hyper_parameters_before_writing_anything(tmp_path, capsys, option,
                                                                   value, message):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *TRAIN, option, value, "--out", out)
    assert code != 0
    assert err.startswith(f"error: {message}")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("text", ["optim:\n  lr: .nan\n", "optim:\n  lr: nan\n",
                                  "optim:\n  gamma: .inf\n", "epochs: .nan\n"])
def test_yaml_config_with_a_non_finite_value_is_refused(tmp_path, capsys, text):
    path, out = tmp_path / "config.yaml", tmp_path / "run"
    path.write_text(text)
    code, err = cli(capsys, "train", "--config", path, "--quiet", "--out", out)
    assert code != 0 and err.startswith("error: --")
    assert "not nan" in err or "not inf" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_config_built_in_code_is_checked_by_train(tmp_path):
    config = TrainConfig(optim=OptimConfig(lr=math.nan))
    with pytest.raises(RobevalError, match="--lr must be valid, not nan: input should be a finite number"):
        train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("values,message", [
    ({"adversary": {"step_size": "0"}}, "--step-size must be valid, not 0.0: input should be greater than 0"),
    ({"adversary": {"trades_beta": "inf"}},
     "--trades-beta must be valid, not inf: input should be a finite number"),
    ({"adversary": {"igr_lambda": "-1"}},
     "--igr-lambda must be valid, not -1.0: input should be greater than or equal to 0"),
    ({"adversary": {"eps_warmup_epochs": "nan"}},
     "--eps-warmup-epochs must be valid, not nan: input should be a finite"),
    ({"optim": {"base_batch_size": 0}},
     "--base-batch-size must be valid, not 0: input should be greater than or equal to 1"),
    ({"optim": {"batch_size": "inf"}}, "--batch-size must be a whole number"),
    ({"optim": {"gamma": 0}}, "--gamma must be valid, not 0.0: input should be greater than 0"),
    ({"optim": {"momentum": 1}}, "--momentum must be valid, not 1.0: input should be less than 1"),
    ({"optim": {"lr": "abc"}}, "--lr must be a number"),
    ({"optim": {"gamma": 1e300, "milestones": [1, 2]}}, "infinite learning rate"),
    ({"epochs": 2.5}, "--epochs must be a whole number"),
    ({"seed": -1}, "--seed must be valid, not -1: input should be greater than or equal to 0"),
    ({"val_batch_size": 0},
     "^val_batch_size must be valid, not 0: input should be greater than or equal to 1"),
    ({"early_stop_patience": -1},
     "--early-stop-patience must be valid, not -1: input should be greater than or equal to 0"),
])
def test_every_numeric_setting_has_a_range(values, message):
    with pytest.raises(RobevalError, match=message) as error:
        config_from_dict(values)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("values,message", [
    ({"data": {"augment": "maybe"}}, "--augment must be valid, not 'maybe': input should be a valid boolean"),
    ({"optim": {"nesterov": 2}}, "--nesterov must be valid, not 2: input should be a valid boolean"),
    ({"epochs": 10**30}, "--epochs must be valid, not 10000000000000000000000000000"),
    ({"adversary": {"steps": 10**7}}, "--steps must be valid, not 10000000: input should be less than"),
    ({"optim": {"batch_size": 10**20}}, "--batch-size must be valid, not 100000000000000000000"),
    ({"data": {"train_subset": 0}}, "--train-subset must be valid, not 0: input should be greater than"),
    ({"diagnostics_batch": -1}, "--diagnostics-batch must be valid, not -1"),
    ({"optim": {"milestones": [3, 10**9]}}, "--milestones must be valid, not 1000000000"),
])
def test_unknown_words_and_huge_counts_are_refused(values, message):
    with pytest.raises(RobevalError, match=message) as error:
        config_from_dict(values)
    assert "\n" not in str(error.value)


def test_yes_and_no_are_booleans():
    config = config_from_dict({"data": {"augment": "no"}, "adversary": {"random_start": "yes"}})
    assert config.data.augment is False and config.adversary.random_start is True


def test_no_numeric_setting_is_left_unchecked():
    """Every int and float setting of the training schema carries a range (eps: parse_eps)."""
    hints = {}
    for cls in [*SECTIONS.values(), TrainConfig]:
        hints.update(typing.get_type_hints(cls, include_extras=True))
    numeric = {name for name, hint in hints.items() if _plain(hint) in (int, float, tuple)}
    ranged = {name for name, hint in hints.items() if "metadata=[" in repr(hint) or "Ge(" in repr(hint)
              or "Gt(" in repr(hint)}
    assert numeric - ranged == {"eps"}


def _plain(hint):
    """int, float, tuple or another plain type behind Annotated and Optional."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Annotated:
        return _plain(args[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _plain(args[0])
    return typing.get_origin(hint) or hint


def poison_parameter_at(monkeypatch, step: int) -> None:
    """After optimiser step `step` (counted over the run), write a nan into one parameter."""
    real = loop.make_optimizer
    calls = {"n": 0}

    def make_optimizer(config, model):
        optimizer = real(config, model)
        step_once = optimizer.step

        def poisoned_step(*args, **kwargs):
            result = step_once(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == step:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = math.nan
            return result

        optimizer.step = poisoned_step
        return optimizer

    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)


def test_run_turning_non_finite_stops_keeps_the_last_finite_checkpoint_and_resumes(tmp_path,
                                                                                   monkeypatch):
    out, saved = tmp_path / "run", {}
    config = resolve_config("ci-small", overrides=TINY)

    def remember_epoch_1(epoch, row, model):
        saved.update({name: sha256(out / name) for name in ("last.pt", "best.pt")})

    poison_parameter_at(monkeypatch, STEPS_PER_EPOCH + 2)
    with pytest.raises(RobevalError) as error:
        train(config, out, progress=False, log=lambda _: None, callbacks=[remember_epoch_1])
    message = str(error.value)
    assert message.startswith("training diverged: 1 parameter became non-finite at epoch 2, "
                              "step 2: lower --lr")
    assert f"(epoch 1) is kept in {out / 'last.pt'}" in message and "\n" not in message
    assert {name: sha256(out / name) for name in saved} == saved   # nothing written after epoch 1
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all_finite(last["model"])
    assert [row["epoch"] for row in read_jsonl(out / "history.jsonl")] == [1]

    monkeypatch.undo()
    result = train(config, out, resume=True, progress=False, log=lambda _: None)
    assert [row["epoch"] for row in result.history] == [1, 2]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and all_finite(last["model"])


def test_overflowing_learning_rate_stops_in_the_first_epoch_without_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *TRAIN, "--lr", "1e30", "--schedule", "constant",
                    "--batch-size", "32", "--out", out)
    assert code == 2 and err.startswith("error: training diverged: ")
    assert "at epoch 1, step " in err and "no checkpoint was saved" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_huge_but_finite_weights_are_not_divergence():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(3e38)   # finite, but its norm overflows to inf in float32
    loss = model(torch.zeros(1, 2)).sum()
    loss.backward()
    device = torch.device("cpu")
    assert int(loop._count_nonfinite([model.weight], device, exact=True)) == 0
    assert loop._nonfinite_everywhere(model, loss, loop.SINGLE, device)[2] == [0, 0, 0, 0]
    model.bias.data[0] = math.inf
    assert loop._nonfinite_everywhere(model, loss, loop.SINGLE, device)[2] == [0, 0, 1, 0]


def test_a_bad_loss_on_another_rank_stops_every_rank(monkeypatch):
    other_rank = [1.0, 0.0, 0.0, 0.0]   # its loss became nan
    monkeypatch.setattr(loop, "all_sum", lambda values, world, device: [
        v + o for v, o in zip(values, other_rank[-len(values):], strict=True)])
    model = nn.Linear(2, 1)
    loss = model(torch.zeros(1, 2)).sum()
    loss.backward()
    value, here, anywhere = loop._nonfinite_everywhere(model, loss, World(0, 2),
                                                       torch.device("cpu"))
    assert here == [0, 0, 0, 0] and anywhere == [1, 0, 0, 0]
    main_error = loop._diverged(value, here, anywhere, 3, 6, None, World(0, 2))
    assert type(main_error) is RobevalError
    assert str(main_error).startswith("training diverged: loss became non-finite on another rank "
                                      "at epoch 4, step 7: lower --lr")
    assert isinstance(loop._diverged(value, here, anywhere, 3, 6, None, World(1, 2)), PeerError)


def test_counts_name_this_ranks_tensors_once():
    error = loop._diverged(math.nan, [1, 14, 14, 7], [2, 28, 28, 14], 1, 0, None, World(0, 2))
    assert str(error).startswith("training diverged: loss became nan at epoch 2, step 1 (also "
                                 "non-finite: 14 gradients, 14 parameters, 7 buffers): lower --lr")


@pytest.mark.slow
def test_two_ranks_stop_together_and_print_the_error_once(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "robeval", "train", *TRAIN, "--lr", "1e30",
                           "--schedule", "constant", "--batch-size", "32", "--device", "cpu",
                           "--nproc", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    errors = [line for line in done.stderr.splitlines() if line.startswith(("error:", "[rank"))]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and errors[0].startswith("error: training diverged: ")
    tensors = len(list(build_model("cnn-small", "relu", in_channels=1, mean=(0.5,),
                                   std=(0.5,)).parameters()))
    assert f"(also non-finite: {tensors} gradients" in errors[0]   # once, not once per rank
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
