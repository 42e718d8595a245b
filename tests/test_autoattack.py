"""AutoAttack and its parts through robeval agree exactly with pyautoattack called directly."""

from __future__ import annotations

import logging
import sys

import pyautoattack
import pytest
import torch
from pyautoattack.autopgd_base import APGDAttack
from torch import nn

from robeval.attacks import ATTACKS, ThreatModel, build_attack, parse_suite
from robeval.attacks.autoattack import ENTRIES, LOGGER_NAME, PyAutoAttack
from robeval.data import DataConfig, load_data, load_test_set
from robeval.errors import RobevalError
from tests.conftest import fit_full_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 8 / 255
N_IMAGES = 64  # at ε=8/255 one point survives APGD-CE, so every part of `aa` runs on it
SEED = 3
PARTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")  # pyautoattack's names
# robeval's names for pyautoattack's parts (plain `apgd-*` is robeval's own APGD)
REGISTERED = {"apgd-ce": "pyautoattack-apgd-ce", "apgd-dlr": "pyautoattack-apgd-dlr",
              "apgd-t": "pyautoattack-apgd-t", "fab-t": "fab-t", "square": "square"}
# What pyautoattack's AutoAttack._set_version("standard") sets for the L∞ and L2 norms.
STANDARD = {"apgd.n_restarts": 1, "apgd_targeted.n_target_classes": 9, "fab.n_restarts": 1,
            "apgd_targeted.n_restarts": 1, "fab.n_target_classes": 9, "square.n_queries": 5000}



@pytest.fixture(scope="module")
def model(cifar10_mini_dir):
    """A one-hidden-layer MLP after 100 full-batch Adam steps on 1024 CIFAR-10 images, in eval mode."""
    config = DataConfig(dataset="cifar10", data_dir=str(cifar10_mini_dir), val_size=0,
                        train_subset=1024, augment=False)
    images, labels = next(load_data(config).train.batches(1024))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10))
    return fit_full_batch(net, images, labels)


@pytest.fixture(scope="module")
def batch(cifar10_mini_dir):
    """The first N_IMAGES CIFAR-10 test images in [0,1] and their labels."""
    test = load_test_set("cifar10", cifar10_mini_dir, N_IMAGES)
    return test.images.float() / 255, test.labels


def direct(model, images, labels, version="custom", attacks=None, settings=None, norm="Linf",
           eps=EPS, replace=None):
    """pyautoattack's (x_adv, y_adv), with attribute `settings` and replaced attack objects."""
    adversary = pyautoattack.AutoAttack(model, attacks=attacks, device="cpu", eps=eps, norm=norm,
                                        seed=SEED, version=version)
    for path, value in (settings or {}).items():
        holder, attribute = path.split(".")
        setattr(getattr(adversary, holder), attribute, value)
    for holder, make in (replace or {}).items():
        setattr(adversary, holder, make(adversary))
    return adversary.run_standard_evaluation(images, labels, batch_size=len(images))


@pytest.fixture(scope="module")
def aa_pair(model, batch):
    """robeval's `aa` outcome and pyautoattack's standard (x_adv, y_adv) on the same batch."""
    images, labels = batch
    outcome = build_attack("aa", ThreatModel(EPS)).run(model, images, labels, SEED)
    return outcome, direct(model, images, labels, version="standard")


@pytest.mark.slow
def test_aa_matches_pyautoattack_standard_version(model, batch, aa_pair):
    images, labels = batch
    outcome, (x_adv, y_adv) = aa_pair
    assert torch.equal(outcome.robust, y_adv == labels)
    assert torch.equal(outcome.adversarial, x_adv)
    assert torch.equal(outcome.robust, model(x_adv).argmax(1) == labels)
    assert torch.equal(outcome.robust, outcome.margin > 0)
    assert 0 < int(outcome.robust.sum()) < int((model(images).argmax(1) == labels).sum())
    assert float(outcome.perturbation_norm.max()) <= EPS + 1e-6
    assert outcome.iterations is None


@pytest.mark.parametrize("spec, settings", [
    ("pyautoattack-apgd-ce", {}),
    ("pyautoattack-apgd-dlr(restarts=2)", {"apgd.n_restarts": 2}),
    ("pyautoattack-apgd-t(targets=3)", {"apgd_targeted.n_target_classes": 3}),
    ("fab-t(iters=20,targets=2)", {"fab.n_iter": 20, "fab.n_target_classes": 2}),
    ("square(queries=100)", {"square.n_queries": 100}),
])
def test_part_matches_pyautoattack_custom_run(model, batch, spec, settings):
    images, labels = batch
    attack = build_attack(spec, ThreatModel(EPS))
    outcome = attack.run(model, images, labels, SEED)
    x_adv, y_adv = direct(model, images, labels, attacks=list(attack.entry.attacks),
                          settings={**STANDARD, **settings})
    assert torch.equal(outcome.robust, y_adv == labels)
    assert torch.equal(outcome.adversarial, x_adv)
    assert (outcome.robust < (model(images).argmax(1) == labels)).any()  # the attack broke points


def test_apgd_iterations_match_pyautoattack_constructor(model, batch):
    images, labels = batch
    attack = build_attack("pyautoattack-apgd-ce(iters=20)", ThreatModel(EPS))
    outcome = attack.run(model, images, labels, SEED)

    def apgd_with_20_iterations(adversary):
        return APGDAttack(model, n_restarts=1, n_iter=20, verbose=False, eps=EPS, norm="Linf",
                          eot_iter=1, rho=.75, seed=SEED, device="cpu", logger=adversary.logger)

    x_adv, y_adv = direct(model, images, labels, attacks=["apgd-ce"],
                          replace={"apgd": apgd_with_20_iterations})
    assert torch.equal(outcome.robust, y_adv == labels)
    assert torch.equal(outcome.adversarial, x_adv)


@pytest.mark.parametrize("name", PARTS)
def test_parts_default_to_the_standard_versions_settings(model, name):
    standard = pyautoattack.AutoAttack(model, eps=EPS, seed=SEED, device=torch.device("cpu"))
    assert {path: _get(standard, path) for path in STANDARD} == STANDARD
    adversary = PyAutoAttack(REGISTERED[name], ThreatModel(EPS)).build(model, torch.device("cpu"), SEED)
    assert adversary.attacks_to_run == [name]
    for holder in ("apgd", "apgd_targeted", "fab", "square"):
        assert vars(getattr(adversary, holder)).keys() == vars(getattr(standard, holder)).keys()
        for attribute, value in vars(getattr(standard, holder)).items():
            if attribute not in ("model", "predict", "logger"):
                assert getattr(getattr(adversary, holder), attribute) == value, (holder, attribute)


def _get(adversary, path):
    holder, attribute = path.split(".")
    return getattr(getattr(adversary, holder), attribute)


@pytest.mark.slow
def test_aa_is_at_least_as_strong_as_apgd_ce(model, batch, aa_pair):
    images, labels = batch
    apgd = build_attack("pyautoattack-apgd-ce", ThreatModel(EPS)).run(model, images, labels, SEED)
    aa = aa_pair[0]
    assert int(aa.robust.sum()) <= int(apgd.robust.sum())
    assert not (aa.robust & ~apgd.robust).any()


def test_run_leaves_the_global_rng_and_trace_function_alone(model, batch):
    images, labels = batch
    attack = build_attack("pyautoattack-apgd-ce(iters=5)", ThreatModel(EPS))
    torch.manual_seed(1234)
    before = torch.get_rng_state()

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        attack.run(model, images[:8], labels[:8], SEED)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert torch.equal(torch.get_rng_state(), before)


def test_logging_is_silent_unless_asked(model, batch, caplog):
    images, labels = batch
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    build_attack("pyautoattack-apgd-ce(iters=5)", ThreatModel(EPS)).run(model, images[:8], labels[:8], SEED)
    assert not caplog.records
    PyAutoAttack("pyautoattack-apgd-ce", ThreatModel(EPS), {"iters": 5}, verbose=True).run(
        model, images[:8], labels[:8], SEED)
    assert any(record.name == LOGGER_NAME for record in caplog.records)
    assert not logging.getLogger(LOGGER_NAME).disabled


def test_l2_apgd_ce_stays_in_the_ball(model, batch):
    images, labels = batch
    outcome = build_attack("pyautoattack-apgd-ce(iters=20)", ThreatModel(0.5, "l2")).run(
        model, images, labels, SEED)
    assert float(outcome.perturbation_norm.max()) <= 0.5 + 1e-4
    assert outcome.robust.sum() < (model(images).argmax(1) == labels).sum()


def test_empty_batch(model, batch):
    images, labels = batch
    outcome = build_attack("aa", ThreatModel(EPS)).run(model, images[:0], labels[:0], SEED)
    assert outcome.robust.shape == (0,)


def test_specs_are_canonical():
    specs = [attack.spec for attack in parse_suite(
        "AA, aa-plus, aa-rand, pyautoattack_apgd_ce(restarts=1,iters=20), pyautoattack-apgd-t(targets=9),"
        " square(queries=500)", ThreatModel(EPS))]
    assert specs == ["aa", "aa-plus", "aa-rand", "pyautoattack-apgd-ce(iters=20)", "pyautoattack-apgd-t",
                     "square(queries=500)"]
    assert set(ENTRIES) <= set(ATTACKS.names())


@pytest.mark.parametrize("spec, words", [
    ("square(iters=3)", ["square has no option iters", "queries", "restarts"]),
    ("fab-t(restarts=2)", ["fab-t has no option restarts", "iters", "targets"]),
    ("aa(queries=10)", ["aa takes no options"]),
    ("pyautoattack-apgd-t(targets=0)", ["targets=0", "positive integer"]),
    ("pyautoattack-apgd-ce(iters=2.5)", ["iters=2.5", "positive integer"]),
])
def test_bad_options_are_refused(spec, words):
    with pytest.raises(RobevalError) as error:
        build_attack(spec, ThreatModel(EPS))
    assert all(word in str(error.value) for word in words)


def test_unknown_attack_lists_autoattack_names():
    with pytest.raises(RobevalError) as error:
        build_attack("apgd-x", ThreatModel(EPS))
    assert all(name in str(error.value) for name in ("aa-plus", "aa-rand", "aa-fast", *PARTS,
                                                      *REGISTERED.values()))


def test_norm_names_and_aliases():
    assert build_attack("aa", ThreatModel(EPS, "inf")).norm == "linf"
    assert build_attack("aa", ThreatModel(0.5, "L2")).norm == "l2"


def test_unsupported_norm_is_refused():
    with pytest.raises(RobevalError, match="linf, l2"):
        build_attack("aa", ThreatModel(0.1, "l1"))
