"""The SAT trainer: methods, tricks, run folders, exact resume, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from robeval.activations import ATTACKER, OPTIMIZER, SurrogateReLU, gradient_phase
from robeval.attacks.pgd import perturb
from robeval.checkpoints import read_jsonl
from robeval.data.batches import TensorSource
from robeval.errors import RobevalError
from robeval.identity import file_sha256
from robeval.models import build_model
from robeval.runs import load_model
from robeval.train import loop, resolve_config, train
from robeval.train.config import PRESETS, config_to_dict
from robeval.train.methods import crafting, train_mode_logits
from robeval.train.schedule import eps_at, lr_at

TINY = {"data": {"train_subset": 256, "val_size": 128}, "val_pgd_steps": 2,
        "optim": {"batch_size": 64}}


def tiny_config(**overrides):
    """ci-small on 256 embedded digits, with nested overrides on top."""
    values = {**TINY}
    for key, value in overrides.items():
        if isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    return resolve_config("ci-small", overrides=values)


def quiet_train(config, out, **kwargs):
    return train(config, out, progress=False, log=lambda _: None, **kwargs)


@pytest.mark.parametrize("method,extra", [
    ("standard", {}), ("fgsm", {"random_start": True}), ("pgd", {"steps": 2}),
    ("pgd", {"norm": "l2", "eps": 0.5, "steps": 2}), ("trades", {"steps": 2}), ("igr", {}),
])
def test_every_method_trains_with_finite_loss(tmp_path, method, extra):
    config = tiny_config(adversary={"method": method, **extra}, epochs=1)
    result = quiet_train(config, tmp_path / method)
    row = result.history[0]
    assert math.isfinite(row["loss"]) and row["loss"] > 0
    assert 0 <= row["val_pgd_acc"] <= row["val_clean_acc"] <= 1
    if method in ("standard", "igr"):
        assert row["train_adv_acc"] is None
    else:
        assert row["train_adv_acc"] is not None


@pytest.mark.slow
def test_run_folder_holds_config_checkpoints_and_history(tmp_path):
    config = tiny_config(epochs=2, optim={"label_smoothing": 0.1, "warmup_epochs": 1})
    result = quiet_train(config, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == config_to_dict(config)
    assert saved["optim"]["label_smoothing"] == 0.1 and saved["adversary"]["bn_mode"] == "eval"
    history = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert [row["epoch"] for row in history] == [1, 2] == [r["epoch"] for r in result.history]
    for key in ("loss", "train_clean_acc", "train_adv_acc", "val_clean_acc", "val_pgd_acc",
                "lr", "eps", "time"):
        assert key in history[0]
    for name in ("last.pt", "best.pt"):  # plain tensors and dicts: loadable as weights only
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert "model" in state
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == result.best_epoch


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    config = tiny_config(epochs=3, adversary={"random_start": True})
    quiet_train(config, tmp_path / "straight")

    def stop_after_first_epoch(epoch, row, model):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        quiet_train(config, tmp_path / "resumed", callbacks=[stop_after_first_epoch])
    assert len(read_jsonl(tmp_path / "resumed" / "history.jsonl")) == 1
    quiet_train(config, tmp_path / "resumed", resume=True)

    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    rows = [read_jsonl(tmp_path / name / "history.jsonl") for name in ("straight", "resumed")]
    assert [r["val_pgd_acc"] for r in rows[0]] == [r["val_pgd_acc"] for r in rows[1]]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    for name in ("last.pt", "best.pt"):   # byte for byte, so a checkpoint hash names the weights
        assert file_sha256(tmp_path / "straight" / name) == file_sha256(tmp_path / "resumed" / name)


@pytest.mark.slow
def test_existing_run_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "run"
    quiet_train(tiny_config(epochs=1), out)
    with pytest.raises(RobevalError, match="already holds this run.*--resume"):
        quiet_train(tiny_config(epochs=1), out)
    with pytest.raises(RobevalError, match="different run.*--force"):
        quiet_train(tiny_config(epochs=1, seed=1), out)
    result = quiet_train(tiny_config(epochs=1, seed=1), out, force=True)
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    assert len(result.history) == 1


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "run"
    config = tiny_config(epochs=3)
    real_method = loop.METHODS.get("pgd")
    calls = {"n": 0}
    batches_per_epoch = 256 // 64

    def diverging(*args, **kwargs):
        calls["n"] += 1
        output = real_method(*args, **kwargs)
        if calls["n"] > batches_per_epoch:  # the second epoch blows up
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setitem(loop.METHODS._entries, "pgd", diverging)
    with pytest.raises(RobevalError, match="loss became nan at epoch 2") as error:
        quiet_train(config, out)
    assert "\n" not in str(error.value)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.slow
def test_early_stopping_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(loop, "validate",
                        lambda *a, **k: {"val_clean_acc": 0.9, "val_pgd_acc": next(scores)})
    result = quiet_train(tiny_config(epochs=5, early_stop_patience=2), tmp_path / "run")
    assert result.stopped_early and len(result.history) == 3
    assert result.best_epoch == 1
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_pgd1_on_cifar10_mini_beats_chance_clearly(tmp_path, cifar10_mini_dir):
    config = resolve_config("ci-small", overrides={
        "data": {"dataset": "cifar10", "data_dir": str(cifar10_mini_dir), "val_size": 500},
        "model": {"activation": "softplus"}, "epochs": 5})
    result = train(config, tmp_path / "cifar", progress=False, log=print)
    last = result.history[-1]
    assert last["val_clean_acc"] > 0.25, last   # chance is 0.10
    assert last["val_pgd_acc"] > 0.15, last


def test_schedules_follow_their_definitions():
    piecewise = tiny_config(epochs=10, optim={"schedule": "piecewise", "lr": 0.1,
                                             "milestones": [5, 8]})
    assert [round(lr_at(piecewise, e), 6) for e in (0, 4.9, 5, 8)] == [0.1, 0.1, 0.01, 0.001]
    cosine = tiny_config(epochs=10, optim={"schedule": "cosine", "lr": 0.2})
    assert lr_at(cosine, 0) == pytest.approx(0.2) and lr_at(cosine, 5) == pytest.approx(0.1)
    assert lr_at(cosine, 10) == pytest.approx(0.0, abs=1e-12)
    onecycle = tiny_config(epochs=10, optim={"schedule": "onecycle", "lr": 0.2})
    assert lr_at(onecycle, 4) == pytest.approx(0.2) and lr_at(onecycle, 2) == pytest.approx(0.1)
    warm = tiny_config(epochs=10, optim={"schedule": "constant", "lr": 0.1, "warmup_epochs": 2})
    assert lr_at(warm, 1) == pytest.approx(0.05) and lr_at(warm, 3) == pytest.approx(0.1)
    scaled = tiny_config(optim={"lr": 0.1, "batch_size": 512, "base_batch_size": 128,
                                "lr_scaling": "linear", "schedule": "constant"})
    assert scaled.effective_lr == pytest.approx(0.4) and lr_at(scaled, 1) == pytest.approx(0.4)
    eps_warm = tiny_config(adversary={"eps": 8 / 255, "eps_warmup_epochs": 4})
    assert eps_at(eps_warm, 1) == pytest.approx(2 / 255) and eps_at(eps_warm, 5) == 8 / 255


def test_presets_hold_the_papers_recipes():
    sat = resolve_config("sat-imagenet-resnet50")
    assert (sat.adversary.method, sat.adversary.steps) == ("pgd", 1)
    assert sat.adversary.eps == pytest.approx(4 / 255) == sat.adversary.step_size
    assert sat.optim.milestones == (30, 60, 90) and sat.optim.weight_decay == 1e-4
    assert sat.epochs == 100 and sat.model.arch == "resnet50" and sat.data.dataset == "imagenet"
    bag = resolve_config("bag-of-tricks-cifar10")
    assert (bag.adversary.steps, bag.adversary.step_size) == (10, pytest.approx(2 / 255))
    assert bag.optim.milestones == (100, 105) and bag.epochs == 110
    assert bag.optim.weight_decay == 5e-4 and bag.adversary.bn_mode == "eval"
    assert bag.optim.batch_size == 128 and bag.optim.lr == 0.1
    assert resolve_config("fgsm-cifar10").adversary.method == "fgsm"
    assert resolve_config("igr-cifar10").adversary.method == "igr"
    assert set(PRESETS) >= {"sat-imagenet-resnet50", "bag-of-tricks-cifar10", "fgsm-cifar10",
                            "igr-cifar10", "ci-small"}


def test_yaml_config_then_command_line_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("preset: ci-small\nadversary:\n  eps: 4/255\n  steps: 3\noptim:\n  lr: 0.2\n")
    config = resolve_config(config_file=path, overrides={"adversary": {"steps": 2}})
    assert config.adversary.eps == pytest.approx(4 / 255)
    assert config.adversary.steps == 2 and config.optim.lr == 0.2
    assert config.model.arch == "cnn-small" and config.preset == "ci-small"


@pytest.mark.parametrize("overrides,message", [
    ({"adversary": {"eps": "8"}}, "above 1.*8/255"),
    ({"model": {"activation": "swishy"}}, "unknown activation 'swishy'; known: .*gelu"),
    ({"model": {"arch": "resnet7"}}, "unknown model 'resnet7'; known: .*cnn-small"),
    ({"data": {"dataset": "mnist"}}, "unknown dataset 'mnist'; known: .*cifar10"),
    ({"adversary": {"method": "pgd-ish"}}, "unknown training method"),
    ({"model": {"activation": "gelu", "smooth_grad": "both"}}, "needs --activation relu"),
    ({"optim": {"colour": 1}}, "unknown setting 'colour'"),
])
def test_bad_settings_give_one_line_errors(overrides, message):
    with pytest.raises(RobevalError, match=message) as error:
        resolve_config("ci-small", overrides=overrides)
    assert "\n" not in str(error.value)


def test_checkpoint_that_does_not_match_the_architecture_is_refused(tmp_path):
    quiet_train(tiny_config(epochs=1), tmp_path / "run")
    model = load_model(tmp_path / "run")
    assert not model.training
    with pytest.raises(RobevalError, match="does not match the architecture"):
        load_model(tmp_path / "run", arch="resnet18")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RobevalError, match="corrupt"):
        load_model(tmp_path / "bad.pt")


def test_crafting_uses_the_configured_bn_mode_and_attacker_phase():
    model = build_model("cnn-small", "relu", smooth_grad="attacker", in_channels=1,
                        mean=(0.5,), std=(0.5,))
    surrogate = next(m for m in model.modules() if isinstance(m, SurrogateReLU))
    model.train()
    with crafting(model, "eval"):
        assert not model.training and surrogate.phase == ATTACKER
    assert model.training
    with crafting(model, "train"):
        assert model.training
    with gradient_phase(model, OPTIMIZER):
        with crafting(model, "eval"):
            pass
        assert surrogate.phase == OPTIMIZER


def test_bn_statistics_do_not_move_while_crafting_in_eval_mode():
    model = build_model("cnn-small", "relu", in_channels=1, mean=(0.5,), std=(0.5,))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    images, labels = torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,))
    with crafting(model, "eval"):
        perturb(model, images, labels, 8 / 255, 2)
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    with crafting(model, "train"):
        perturb(model, images, labels, 8 / 255, 2)
    assert not all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())


def test_train_mode_logits_use_batch_statistics_and_leave_running_ones_alone():
    torch.manual_seed(0)
    model = build_model("cnn-small", "relu", in_channels=1, mean=(0.5,), std=(0.5,)).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    images = torch.rand(16, 1, 32, 32)
    logits = train_mode_logits(model, images)
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    with torch.no_grad():
        assert torch.allclose(logits, model(images))          # the training-mode forward
        assert not torch.allclose(logits, model.eval()(images))   # not the running statistics


def test_train_accuracies_are_measured_in_one_bn_mode_and_labelled(tmp_path, monkeypatch):
    """On a real run, clean ≥ adversarial in training mode; the crafting pass is reported apart."""
    monkeypatch.setattr(loop, "CLEAN_ACCURACY_EVERY", 1)   # both figures on the same batches
    config = tiny_config(epochs=2, adversary={"method": "fgsm"}, diagnostics_batch=0)
    history = quiet_train(config, tmp_path / "run").history
    for row in history:
        assert row["train_clean_acc"] >= row["train_adv_acc"]
        assert 0 <= row["craft_clean_acc"] <= 1
    # crafting with BatchNorm on running statistics is a different figure (low while they settle)
    assert any(abs(row["craft_clean_acc"] - row["train_clean_acc"]) > 0.02 for row in history)
    assert read_jsonl(tmp_path / "run" / "history.jsonl")[-1]["craft_clean_acc"] == history[-1][
        "craft_clean_acc"]
    random_start = tiny_config(epochs=1, adversary={"method": "fgsm", "random_start": True},
                               diagnostics_batch=0)
    row = quiet_train(random_start, tmp_path / "rs").history[0]
    assert row["craft_clean_acc"] is None and row["train_clean_acc"] >= row["train_adv_acc"]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_measuring_clean_accuracy_on_a_sample_leaves_training_unchanged(tmp_path, monkeypatch,
                                                                        bn_mode):
    """The clean figure's extra pass leaves no trace: the weights are the same whether it runs on
    every batch or on a sample; crafting in training mode gives it on every batch for free."""
    config = tiny_config(epochs=2, adversary={"method": "pgd", "bn_mode": bn_mode},
                         diagnostics_batch=0)
    calls = {"n": 0}
    real = loop.METHODS.get("pgd")

    def counting(*args, measure_clean=True, **kwargs):
        output = real(*args, measure_clean=measure_clean, **kwargs)
        calls["n"] += output.clean_logits is not None
        return output

    monkeypatch.setitem(loop.METHODS._entries, "pgd", counting)
    monkeypatch.setattr(loop, "CLEAN_ACCURACY_EVERY", 1)
    every = quiet_train(config, tmp_path / "every").history
    measured_every, calls["n"] = calls["n"], 0
    monkeypatch.setattr(loop, "CLEAN_ACCURACY_EVERY", 3)
    sampled = quiet_train(config, tmp_path / "sampled").history
    before, after = _weights(tmp_path / "every" / "last.pt"), _weights(tmp_path / "sampled" / "last.pt")
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    assert [row["train_adv_acc"] for row in every] == [row["train_adv_acc"] for row in sampled]
    assert measured_every == 8   # 2 epochs of 256 / 64 batches
    if bn_mode == "train":       # the crafting pass is the training-mode clean pass
        assert calls["n"] == 8
        assert [row["train_clean_acc"] for row in every] == [row["train_clean_acc"] for row in sampled]
    else:                        # batches 0 and 3 of each epoch
        assert calls["n"] == 4
        assert all(0 <= row["train_clean_acc"] <= 1 for row in sampled)


def test_perturb_stays_in_the_ball_and_leaves_parameter_gradients_alone():
    torch.manual_seed(0)
    model = build_model("cnn-small", "gelu", in_channels=1, mean=(0.5,), std=(0.5,)).eval()
    images, labels = torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,))
    adv, first_logits = perturb(model, images, labels, 8 / 255, 3, random_start=True)
    assert (adv - images).abs().max() <= 8 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    loss = torch.nn.functional.cross_entropy
    assert loss(model(adv), labels) > loss(model(images), labels)
    clean_adv, clean_logits = perturb(model, images, labels, 8 / 255, 1)
    assert torch.allclose(clean_logits, model(images))


def test_igr_penalises_the_input_gradient(tmp_path):
    from robeval.train.methods import igr, standard

    model = build_model("cnn-small", "softplus", in_channels=1, mean=(0.5,), std=(0.5,))
    images, labels = torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,))
    config = tiny_config(adversary={"method": "igr"})
    criterion = torch.nn.functional.cross_entropy
    plain = standard(model, images, labels, config.adversary, 8 / 255, criterion).loss
    regularised = igr(model, images, labels, config.adversary, 8 / 255, criterion).loss
    assert regularised > plain
    regularised.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name,cls,extra", [
    ("sgd", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
    ("adam", torch.optim.Adam, {}),
    ("adamw", torch.optim.AdamW, {}),
])
def test_optimiser_is_built_as_configured(name, cls, extra):
    config = tiny_config(optim={"optimizer": name, "weight_decay": 1e-3, **extra})
    model = build_model("cnn-small", in_channels=1, mean=(0.5,), std=(0.5,))
    optimizer = loop.make_optimizer(config, model)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 1e-3
    for key, value in extra.items():
        assert group[key] == value


@pytest.mark.parametrize("smooth_grad", ["none", pytest.param("attacker", marks=pytest.mark.slow),
                                         "optimizer", "both"])
def test_every_row_of_sat_table1_trains(tmp_path, smooth_grad):
    config = tiny_config(model={"activation": "relu", "smooth_grad": smooth_grad}, epochs=1,
                         data={"train_subset": 128})
    result = quiet_train(config, tmp_path / smooth_grad)
    assert math.isfinite(result.history[0]["loss"])
    model = load_model(tmp_path / smooth_grad)
    surrogates = [m for m in model.modules() if isinstance(m, SurrogateReLU)]
    assert bool(surrogates) == (smooth_grad != "none")


def test_smooth_attacker_gradient_changes_the_crafted_example():
    torch.manual_seed(0)
    model = build_model("cnn-small", "relu", smooth_grad="attacker", in_channels=1,
                        mean=(0.5,), std=(0.5,)).eval()
    images, labels = torch.rand(16, 1, 32, 32), torch.randint(0, 10, (16,))
    exact, _ = perturb(model, images, labels, 8 / 255, 1)
    with gradient_phase(model, ATTACKER):
        smooth, _ = perturb(model, images, labels, 8 / 255, 1)
    assert not torch.equal(exact, smooth)


def test_label_smoothing_enters_the_training_loss_only(tmp_path):
    losses = {}
    for smoothing in (0.0, 0.3):
        config = tiny_config(optim={"label_smoothing": smoothing}, epochs=1,
                             data={"train_subset": 128})
        losses[smoothing] = quiet_train(config, tmp_path / str(smoothing)).history[0]["loss"]
    assert losses[0.3] != losses[0.0]


def test_amp_setting_is_ignored_on_cpu(tmp_path):
    config = tiny_config(amp=True, epochs=1, device="cpu", data={"train_subset": 128})
    plain = tiny_config(amp=False, epochs=1, device="cpu", data={"train_subset": 128})
    with_amp = quiet_train(config, tmp_path / "amp").history[0]["loss"]
    without = quiet_train(plain, tmp_path / "plain").history[0]["loss"]
    assert with_amp == without


def test_history_records_gradient_diagnostics_on_a_fixed_batch(tmp_path):
    result = quiet_train(tiny_config(epochs=1, diagnostics_batch=32), tmp_path / "run")
    row = read_jsonl(tmp_path / "run" / "history.jsonl")[0]
    for key in ("diag_R_fgsm_mean", "diag_R_pgd_mean", "diag_grad_l1_mean", "diag_grad_l2_mean",
                "diag_grad_alignment_mean", "diag_loss_gap_mean", "diag_fgsm_acc",
                "diag_pgd10_acc"):
        assert math.isfinite(row[key]), key
    assert row["diag_pgd10_acc"] <= row["diag_fgsm_acc"] + 0.1
    assert row["collapse"] is False and result.history[0]["collapse"] is False
    off = quiet_train(tiny_config(epochs=1, diagnostics_batch=0), tmp_path / "off")
    assert "diag_R_fgsm_mean" not in off.history[0]


def test_collapse_needs_pgd_to_fall_while_fgsm_stays_high():
    history = [{"diag_pgd10_acc": 0.40, "diag_fgsm_acc": 0.50}]
    assert loop.collapsed(history, {"diag_pgd10_acc": 0.05, "diag_fgsm_acc": 0.70})
    assert not loop.collapsed(history, {"diag_pgd10_acc": 0.05, "diag_fgsm_acc": 0.10})
    assert not loop.collapsed(history, {"diag_pgd10_acc": 0.35, "diag_fgsm_acc": 0.70})
    assert not loop.collapsed([], {"diag_pgd10_acc": 0.0, "diag_fgsm_acc": 0.9})
    assert not loop.collapsed(history, {"loss": 1.0})


def test_stop_on_collapse_ends_the_run_and_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    accuracies = iter([(0.40, 0.45), (0.42, 0.50), (0.02, 0.80), (0.01, 0.85)])

    def fake_diagnostics(model, batch, config, seed):
        pgd, fgsm = next(accuracies)
        return {"diag_pgd10_acc": pgd, "diag_fgsm_acc": fgsm}

    monkeypatch.setattr(loop, "epoch_diagnostics", fake_diagnostics)
    scores = iter([0.3, 0.35, 0.1, 0.05])
    monkeypatch.setattr(loop, "validate",
                        lambda *a, **k: {"val_clean_acc": 0.9, "val_pgd_acc": next(scores)})
    config = tiny_config(epochs=4, stop_on_collapse=True)
    result = quiet_train(config, tmp_path / "run")
    assert [row["collapse"] for row in result.history] == [False, False, True]
    assert result.stopped_early and result.best_epoch == 2
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 2


def _validation_case(norm: str):
    """A random linear classifier and 48 images, half labelled as it predicts them, so that some
    points are clean-correct and the attack breaks some of those but not all."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        predicted = model(images.float() / 255).argmax(1)
    labels = torch.where(torch.arange(48) % 2 == 0, predicted, (predicted + 1) % 10)
    return model, TensorSource(images, labels), (0.5 if norm == "l2" else 2 / 255)


def _validate_every_point(model, source, eps, steps, norm, batch_size, seed) -> dict:
    """The validation rule written out plainly: attack every point, count the last iterate."""
    torch.manual_seed(seed)
    clean = robust = 0
    for images, labels in source.batches(batch_size, seed):
        with torch.no_grad():
            clean_ok = model(images).argmax(1) == labels
        adversarial, _ = perturb(model, images, labels, eps, steps, eps / 4, norm, random_start=True)
        with torch.no_grad():
            robust += int(((model(adversarial).argmax(1) == labels) & clean_ok).sum())
        clean += int(clean_ok.sum())
    return {"val_clean_acc": clean / len(source), "val_pgd_acc": robust / len(source)}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_validation_attacks_only_clean_correct_points_and_equals_attacking_every_point(norm):
    model, source, eps = _validation_case(norm)
    expected = _validate_every_point(model, source, eps, 3, norm, 20, seed=11)
    assert 0 < expected["val_pgd_acc"] < expected["val_clean_acc"] < 1
    attacked = []
    hook = model.register_forward_hook(
        lambda module, inputs, output: attacked.append(len(inputs[0])) if torch.is_grad_enabled() else None)
    measured = loop.validate(model, source, eps, 3, norm, 20, seed=11)
    hook.remove()
    assert measured == expected
    clean_correct = expected["val_clean_acc"] * len(source)
    assert sum(attacked) == 3 * round(clean_correct)   # three gradient passes per clean-correct point
    assert model.training   # validation hands the model back in training mode
