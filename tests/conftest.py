"""Shared fixtures: the cifar10-mini folder, models trained once per session, small helpers;
and the `cifar` mark on every test that needs cifar10-mini."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR10_MINI = REPO_ROOT.parent / "shared" / "data" / "cifar10-mini"


def cifar10_mini_path() -> Path:
    """Where cifar10-mini lives: $ROBEVAL_CIFAR10_MINI, else ../shared/data/cifar10-mini."""
    return Path(os.environ.get("ROBEVAL_CIFAR10_MINI", DEFAULT_CIFAR10_MINI))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark `cifar` every test whose fixture closure holds `cifar10_mini_dir`.

    Read from the fixtures a test uses, directly or through other fixtures, so the mark cannot
    drift from what it needs; first, so that `-m` (pytest deselects in this same hook) sees it.
    """
    for item in items:
        if "cifar10_mini_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cifar)


@pytest.fixture(scope="session")
def cifar10_mini_dir() -> Path:
    """The cifar10-mini folder; skipped when absent, except under CI=true where that fails."""
    path = cifar10_mini_path()
    if not (path / "cifar-10-batches-py" / "test_batch").is_file():
        message = f"cifar10-mini not found at {path} (set ROBEVAL_CIFAR10_MINI)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def fit_full_batch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   steps: int = 100, lr: float = 1e-3) -> torch.nn.Module:
    """A quick honest classifier: `steps` full-batch Adam steps on cross-entropy, then eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def cifar_mlp(cifar10_mini_dir) -> torch.nn.Module:
    """A one-hidden-layer MLP (3072-64-10) after 100 full-batch Adam steps on the first 512
    cifar10-mini training images, in eval mode: the small trained model several files attack.

    Shared by the whole session: copy it (`copy.deepcopy`) before changing it in any way.
    """
    from robeval.data import DataConfig, load_data

    config = DataConfig(dataset="cifar10", data_dir=str(cifar10_mini_dir), val_size=0,
                        train_subset=512, augment=False)
    images, labels = next(load_data(config).train.batches(512))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as under `one_torch_thread`, where its users trained it before
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64),
                                  torch.nn.ReLU(), torch.nn.Linear(64, 10))
        return fit_full_batch(net, images, labels)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads; one keeps their tests fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch):
    """Tests never download anything and start from a known RNG state."""
    monkeypatch.setenv("ROBEVAL_OFFLINE", "1")
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_cifar_run(cifar10_mini_dir, tmp_path_factory):
    """A cnn-small (ReLU) PGD-1-trained for 3 epochs on cifar10-mini: a real, weakly robust model."""
    from robeval.train import resolve_config, train

    config = resolve_config("ci-small", overrides={
        "data": {"dataset": "cifar10", "data_dir": str(cifar10_mini_dir), "val_size": 200},
        "model": {"activation": "relu"}, "epochs": 3, "seed": 0})
    out = tmp_path_factory.mktemp("runs") / "cifar-relu-pgd1"
    train(config, out, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def cifar_test_batch(cifar10_mini_dir):
    """The first 256 cifar10-mini test images in [0,1] and their labels."""
    from robeval.data import load_test_set

    test = load_test_set("cifar10", cifar10_mini_dir, 256)
    return test.images.float() / 255, test.labels
