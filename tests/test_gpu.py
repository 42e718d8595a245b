"""On CUDA: evaluation agrees with CPU, `--batch-size auto` probes real memory.

Selected only with `-m gpu` (as `nox -s gpu` does); the default run deselects them.
"""

from __future__ import annotations

import pytest
import torch

from robeval.evaluate import EvalConfig, evaluate
from robeval.results import ResultsStore
from robeval.sources import load_source

pytestmark = pytest.mark.gpu


def evaluate_on(device: str, run_dir, data_dir, db, **overrides):
    config = EvalConfig(**{"suite": "fgsm,pgd20", "n": 512, "batch_size": 128, "seed": 3,
                           "data_dir": str(data_dir), "device": device, "checks": False,
                           **overrides})
    source = load_source(str(run_dir), device=torch.device(device))
    return evaluate(source, config, ResultsStore(db), progress=False, log=lambda _: None)


def test_pgd_on_cuda_gives_the_outcomes_and_passes_of_cpu(trained_cifar_run, cifar10_mini_dir,
                                                          tmp_path):
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    cpu = evaluate_on("cpu", trained_cifar_run, cifar10_mini_dir, tmp_path / "cpu.sqlite")
    cuda = evaluate_on("cuda", trained_cifar_run, cifar10_mini_dir, tmp_path / "cuda.sqlite")
    a, b = cpu.store.per_sample(cpu.run_id), cuda.store.per_sample(cuda.run_id)
    assert (a["clean_pred"] == b["clean_pred"]).mean() >= 0.99
    # floating-point sums differ between the devices, so a point on the boundary may flip
    assert (a["robust"] == b["robust"]).mean() >= 0.97
    assert abs(a["robust"].mean() - b["robust"].mean()) <= 0.02
    fgsm_cpu = cpu.summary.loc["fgsm", "passes_per_image"]
    assert cuda.summary.loc["fgsm", "passes_per_image"] == pytest.approx(fgsm_cpu, rel=0.02)
    assert cuda.store.run_record(cuda.run_id).device.startswith("cuda")


def test_auto_batch_size_on_cuda_finds_a_size_that_fits(trained_cifar_run, cifar10_mini_dir,
                                                        tmp_path):
    result = evaluate_on("cuda", trained_cifar_run, cifar10_mini_dir, tmp_path / "db.sqlite",
                         batch_size="auto", suite="fgsm", n=1000)
    size = result.store.run_record(result.run_id).batch_size
    assert 256 < size <= 1000   # a small cnn on a GPU takes every image of the run at once
    assert result.summary.loc["clean", "n"] == 1000
