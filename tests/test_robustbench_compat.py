"""robustbench's AutoAttack path runs on pyautoattack through robeval.robustbench_compat.

Installing the adapter is process-wide and harmless (it only appears where no ``autoattack``
package exists), so the benchmark tests leave it and ``robustbench`` imported; the tests of
``install`` itself restore ``sys.modules`` exactly.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import pickle
import sys
import types

import pyautoattack
import pyautoattack.state
import pytest
import torch
from torch import nn

from robeval import robustbench_compat
from robeval.errors import RobevalError
from tests.conftest import fit_full_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_IMAGES = 32
BATCH_SIZE = 10  # several batches for 32 images, and not pyautoattack's default of 250
EPS = 2 / 255  # small enough that some of the tiny model's correct answers survive
SEED = 0
CHEAP_ATTACKS = ["apgd-ce"]  # robustbench asks for "standard"; the tests swap in this subset
AUTOATTACK_MODULES = ("autoattack", "autoattack.state")


def _original_autoattack_installed() -> bool:
    """Whether a real ``autoattack`` package (not the adapter) is importable."""
    module = sys.modules.get("autoattack")
    if module is not None:
        return getattr(module, "AutoAttack", None) is not robustbench_compat.AutoAttack
    return importlib.util.find_spec("autoattack") is not None


needs_adapter = pytest.mark.skipif(
    _original_autoattack_installed(),
    reason="the original autoattack package is installed, so the adapter is not used",
)


def _load_batch(cifar10_mini_dir, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] as (N, 3, 32, 32) and labels of one official-format CIFAR-10 batch."""
    with open(cifar10_mini_dir / "cifar-10-batches-py" / name, "rb") as file:
        batch = pickle.load(file, encoding="bytes")
    images = torch.as_tensor(batch[b"data"]).float().div(255).reshape(-1, 3, 32, 32)
    return images, torch.as_tensor(batch[b"labels"], dtype=torch.long)


def _tiny_model() -> nn.Module:
    """A linear CIFAR-10 classifier."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))



@pytest.fixture(scope="module")
def robustbench():
    """The robustbench package, imported on top of the adapter when needed."""
    return robustbench_compat.import_robustbench()


@pytest.fixture(scope="module")
def test_images(cifar10_mini_dir):
    """The first N_IMAGES official CIFAR-10 test images and labels."""
    images, labels = _load_batch(cifar10_mini_dir, "test_batch")
    return images[:N_IMAGES], labels[:N_IMAGES]


@pytest.fixture(scope="module")
def trained_model(cifar10_mini_dir):
    """The linear model after 100 full-batch Adam steps on data_batch_1, in eval mode."""
    torch.manual_seed(SEED)
    images, labels = _load_batch(cifar10_mini_dir, "data_batch_1")
    return fit_full_batch(_tiny_model(), images, labels)


@pytest.fixture(scope="module")
def direct_flags(trained_model, test_images):
    """Per-image robustness from pyautoattack called directly with the benchmark's settings."""
    images, labels = test_images
    attack = pyautoattack.AutoAttack(
        trained_model,
        attacks=CHEAP_ATTACKS,
        device="cpu",
        eps=EPS,
        norm="Linf",
        seed=SEED,
        version="custom",
    )
    _, adversarial_labels = attack.run_standard_evaluation(images, labels, batch_size=BATCH_SIZE)
    return adversarial_labels == labels


@pytest.fixture
def without_autoattack_modules():
    """Hide the ``autoattack`` entries of sys.modules during a test; restore them exactly."""
    saved = {name: sys.modules.pop(name) for name in AUTOATTACK_MODULES if name in sys.modules}
    yield
    for name in AUTOATTACK_MODULES:
        sys.modules.pop(name, None)
    sys.modules.update(saved)


def _run_benchmark(robustbench, monkeypatch, model, test_images, **kwargs):
    """robustbench.benchmark on `test_images` with seeded CHEAP_ATTACKS.

    Returns clean and robust accuracy, the keyword arguments robustbench gave AutoAttack, the
    adversaries built, and the keyword arguments and the adversarial labels of pyautoattack's run.
    """
    images, labels = test_images
    requested, adversaries, calls = [], [], []

    def load_clean_dataset(dataset, n_examples, data_dir, prepr):
        assert dataset.value == "cifar10"
        return images[:n_examples], labels[:n_examples]

    def seeded_cheap_autoattack(*args, **given):
        requested.append(given)
        cheap = {**given, "attacks_to_run": CHEAP_ATTACKS, "version": "custom", "seed": SEED}
        adversaries.append(robustbench_compat.AutoAttack(*args, **cheap))
        return adversaries[-1]

    run = pyautoattack.AutoAttack.run_standard_evaluation

    def recording_run(self, x, y, /, **options):
        x_adv, y_adv = run(self, x, y, **options)
        calls.append((options, y_adv))
        return x_adv, y_adv

    monkeypatch.setattr(robustbench.eval, "load_clean_dataset", load_clean_dataset)
    monkeypatch.setattr(robustbench.eval, "AutoAttack", seeded_cheap_autoattack)
    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", recording_run)
    clean, robust = robustbench.benchmark(
        model,
        n_examples=N_IMAGES,
        dataset="cifar10",
        threat_model="Linf",
        device=torch.device("cpu"),
        batch_size=BATCH_SIZE,
        eps=EPS,
        **kwargs,
    )
    return clean, robust, requested, adversaries, calls


def _accuracy(model, images, labels) -> float:
    """Top-1 accuracy of `model`."""
    with torch.no_grad():
        return (model(images).argmax(1) == labels).sum().item() / len(labels)


@needs_adapter
def test_install_registers_the_adapter_once(without_autoattack_modules):
    robustbench_compat.install()
    module = sys.modules["autoattack"]
    robustbench_compat.install()

    assert sys.modules["autoattack"] is module
    assert module.AutoAttack is robustbench_compat.AutoAttack
    from autoattack.state import EvaluationState

    assert EvaluationState is pyautoattack.state.EvaluationState
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("autoattack.checks")


def test_install_keeps_an_existing_autoattack_module(without_autoattack_modules):
    existing = types.ModuleType("autoattack")
    sys.modules["autoattack"] = existing

    robustbench_compat.install()

    assert sys.modules["autoattack"] is existing
    assert "autoattack.state" not in sys.modules


def test_install_defers_to_an_importable_original_package(without_autoattack_modules, monkeypatch):
    find_spec = importlib.util.find_spec

    def original_is_importable(name, *args):
        if name == "autoattack":
            return importlib.machinery.ModuleSpec("autoattack", None)
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", original_is_importable)
    robustbench_compat.install()

    assert not any(name in sys.modules for name in AUTOATTACK_MODULES)


@needs_adapter
def test_install_without_pyautoattack_names_the_fix(without_autoattack_modules, monkeypatch):
    monkeypatch.setattr(robustbench_compat, "pyautoattack", None)

    with pytest.raises(RobevalError, match="pip install pyautoattack"):
        robustbench_compat.install()
    assert "autoattack" not in sys.modules


def test_adapter_translates_the_original_arguments(monkeypatch):
    model = _tiny_model().eval()
    adversary = robustbench_compat.AutoAttack(
        model,
        norm="L2",
        eps=0.5,
        seed=3,
        verbose=False,
        attacks_to_run=["apgd-ce"],
        version="custom",
        device="cpu",
    )
    assert isinstance(adversary, pyautoattack.AutoAttack)
    assert (adversary.norm, adversary.epsilon, adversary.seed) == ("L2", 0.5, 3)
    assert (adversary.attacks_to_run, adversary.version) == (["apgd-ce"], "custom")
    assert (adversary.device, adversary.verbose) == ("cpu", False)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert robustbench_compat.AutoAttack(model).device == torch.device("cpu")
    assert robustbench_compat.AutoAttack(model, version="custom").attacks_to_run == []


def test_adapter_returns_what_the_original_returns():
    model = _tiny_model().eval()
    images = torch.rand(6, 3, 32, 32)
    labels = model(images).argmax(1)
    adversary = robustbench_compat.AutoAttack(
        model, eps=8 / 255, seed=SEED, attacks_to_run=["apgd-ce", "apgd-dlr"], version="custom"
    )

    adversarial = adversary.run_standard_evaluation(images, labels, bs=4)
    again, predictions = adversary.run_standard_evaluation(images, labels, bs=4, return_labels=True)
    individual = adversary.run_standard_evaluation_individual(images, labels, bs=4)

    assert isinstance(adversarial, torch.Tensor) and adversarial.shape == images.shape
    assert torch.equal(adversarial, again)
    assert torch.equal(predictions, model(adversarial).argmax(1))
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    assert list(individual) == ["apgd-ce", "apgd-dlr"]
    assert all(isinstance(x, torch.Tensor) for x in individual.values())
    assert adversary.attacks_to_run == ["apgd-ce", "apgd-dlr"]


def test_adapter_rejects_unknown_and_unsupported_arguments(tmp_path):
    model = _tiny_model().eval()
    images, labels = torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)

    with pytest.raises(TypeError, match="bogus"):
        robustbench_compat.AutoAttack(model, bogus=1)
    with pytest.raises(TypeError, match="batch_size"):
        robustbench_compat.AutoAttack(model).run_standard_evaluation(images, labels, batch_size=2)
    with pytest.raises(RobevalError, match="torch.nn.Module"):
        robustbench_compat.AutoAttack(model, is_tf_model=True)
    with pytest.raises(ValueError, match="version='custom'"):
        robustbench_compat.AutoAttack(model, attacks_to_run=["apgd-ce"], version="standard")

    state = tmp_path / "state.json"
    state.write_text("{}")
    with pytest.raises(RobevalError, match="delete it or pass a new path"):
        robustbench_compat.AutoAttack(model).run_standard_evaluation(images, labels, state_path=state)


@needs_adapter
def test_benchmark_matches_pyautoattack_called_directly(
    robustbench, trained_model, test_images, direct_flags, tmp_path, monkeypatch
):
    assert robustbench.eval.AutoAttack is robustbench_compat.AutoAttack
    handlers = list(logging.getLogger("auto-attack").handlers)
    log = tmp_path / "autoattack.log"

    clean, robust, requested, adversaries, calls = _run_benchmark(
        robustbench, monkeypatch, trained_model, test_images, log_path=str(log)
    )

    expected_robust = direct_flags.sum().item() / N_IMAGES
    assert clean == _accuracy(trained_model, *test_images)
    assert robust == expected_robust
    assert 0 < robust < clean  # the attacks fooled some images, not all
    cpu = torch.device("cpu")
    assert requested == [
        {"norm": "Linf", "eps": EPS, "version": "standard", "device": cpu, "log_path": str(log)}
    ]
    [adversary] = adversaries
    assert (adversary.norm, adversary.epsilon, adversary.device) == ("Linf", EPS, cpu)
    assert adversary.attacks_to_run == CHEAP_ATTACKS
    [(options, adversarial_labels)] = calls
    assert options == {"batch_size": BATCH_SIZE, "state_path": None}
    assert torch.equal(adversarial_labels == test_images[1], direct_flags)
    text = log.read_text()
    assert f"initial accuracy: {clean:.2%}" in text
    assert f"robust accuracy: {robust:.2%}" in text
    assert logging.getLogger("auto-attack").handlers == handlers


def test_adapter_writes_the_state_file_and_refuses_to_resume(trained_model, test_images, tmp_path):
    images, labels = test_images
    state = tmp_path / "aa_state.json"
    adversary = robustbench_compat.AutoAttack(
        trained_model, eps=EPS, seed=SEED, attacks_to_run=CHEAP_ATTACKS, version="custom"
    )

    _, predictions = adversary.run_standard_evaluation(
        images, labels, bs=BATCH_SIZE, return_labels=True, state_path=str(state)
    )

    flags = pyautoattack.state.EvaluationState.from_disk(state).robust_flags
    assert torch.equal(flags, predictions == labels)
    assert 0 < flags.sum() < (trained_model(images).argmax(1) == labels).sum()
    with pytest.raises(RobevalError, match="cannot resume"):
        adversary.run_standard_evaluation(images, labels, state_path=state)
