"""robeval's engine against models built to probe its shortcuts (benchmarks/planted.py).

Each construction fooled a shortcut before the engine was hardened: a temperature that grows off
the data (cross-entropy attacks climb it instead of the margin), gradients shattered on the
bright third of the inputs only (medians over a batch looked honest), decoy classes that never
win but that MALT ranked first. Here each is built around the session's small MLP.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import robeval
from robeval.attacks.apgd import class_mask, malt_targets
from robeval.data import load_test_set
from robeval.diagnostics.masking import run_checks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from planted import DecoyClasses, PartialShatter, TemperatureMasked  # noqa: E402

EPS = 8 / 255


@pytest.fixture(scope="module")
def test_images(cifar10_mini_dir):
    test = load_test_set("cifar10", cifar10_mini_dir, 200)
    return test.images.float() / 255, test.labels


def quiet(*_args) -> None:
    pass


def flagged(model, images, labels, names) -> dict[str, bool]:
    return {check.name: not check.passed for check in run_checks(model, images, labels, eps=EPS, names=names)}


def test_a_temperature_that_fools_cross_entropy_is_flagged(cifar_mlp, test_images):
    masked = TemperatureMasked(copy.deepcopy(cifar_mlp)).eval()
    assert flagged(masked, *test_images, ["loss_dependence"]) == {"loss_dependence": True}
    assert flagged(cifar_mlp, *test_images, ["loss_dependence"]) == {"loss_dependence": False}


def test_gradients_shattered_on_a_third_of_the_inputs_open_the_gate(cifar_mlp, test_images):
    images, labels = test_images
    shattered = PartialShatter(copy.deepcopy(cifar_mlp)).eval()
    with torch.no_grad():
        correct = shattered(images).argmax(1) == labels
    bright = images.flatten(1).mean(1) > 0.5238
    assert 0.2 < float(bright[correct].float().mean()) < 0.6      # a part of the points, not all
    result = robeval.attack_tensors(shattered, images[correct], labels[correct], eps=EPS,
                                    suite="aa-fast(queries=100)", batch_size=200, log=quiet)
    notes = result.attack_notes["aa-fast(queries=100)"]
    assert notes.gate_fired == 1 and "gradient_quality" in notes.gate_flags
    honest = robeval.attack_tensors(cifar_mlp, images[correct], labels[correct], eps=EPS,
                                    suite="aa-fast(queries=100)", batch_size=200, log=quiet)
    assert honest.attack_notes["aa-fast(queries=100)"].gate_fired == 0


def test_decoy_classes_do_not_take_the_targets(cifar_mlp, test_images):
    images, labels = test_images
    decoyed = DecoyClasses(copy.deepcopy(cifar_mlp), replace=True).eval()
    with torch.no_grad():
        predictions = decoyed(images).argmax(1)
    keep = predictions == labels
    x, y = images[keep][:32], labels[keep][:32]
    decoys = torch.tensor([7, 8, 9])
    assert not torch.isin(predictions, decoys).any()             # decoys never win
    fooled = malt_targets(decoyed, x, y, "linf", 3)
    assert float(torch.isin(fooled, decoys).float().mean()) > 0.9  # plain MALT takes the decoys
    live = class_mask(predictions, 10)
    chosen = malt_targets(decoyed, x, y, "linf", 3, live=live)
    assert not torch.isin(chosen, decoys).any()                  # live classes first
    assert (chosen != y[:, None]).all()
