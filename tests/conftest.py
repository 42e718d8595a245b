"""Shared fixtures: the cifar10-mini folder and small helpers."""

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


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch):
    """Tests never download anything and start from a known RNG state."""
    monkeypatch.setenv("ROBEVAL_OFFLINE", "1")
    torch.manual_seed(0)
