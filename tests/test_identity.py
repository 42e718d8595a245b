"""Identity by behaviour: an in-memory model is keyed by its weights and by what it computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robeval
from robeval.api import python_source
from robeval.data.digits import read_digits
from robeval.evaluate import ResolvedEval, run_key
from robeval.identity import (
    PROBE_IMAGES,
    ModelSource,
    module_fingerprint,
    outputs_hash,
    probe_fingerprint,
    source_identity,
)
from robeval.results import ResultsStore
from tests.conftest import fit_full_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 8 / 255
DIGITS = (1, 32, 32)


class Wrapped(nn.Module):
    """`net`'s logits times `scale`, plus `shift` on class 0: plain floats, not buffers."""

    def __init__(self, net: nn.Module, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.net, self.scale, self.shift = net, scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x) * self.scale
        return torch.cat([logits[:, :1] + self.shift, logits[:, 1:]], dim=1)


class Random(nn.Module):
    """Dropout and Gaussian noise on the logits: random in forward, in training mode too."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.dropout = net, nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.dropout(self.net(x))
        return logits + 0.1 * torch.randn(logits.shape, device=logits.device)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """A small digits classifier, trained for a few full-batch steps."""
    torch.manual_seed(0)
    train = read_digits("train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))
    return fit_full_batch(model, train.images.float() / 255, train.labels, steps=60, lr=1e-2)


def identity(model: nn.Module) -> str:
    return source_identity(python_source(model, None, "digits", EPS, "linf"))


def test_a_float_attribute_changes_the_identity_not_the_weights(net):
    one, three = Wrapped(net, scale=1.0), Wrapped(net, scale=3.0)
    assert module_fingerprint(one) == module_fingerprint(three)
    assert identity(one) != identity(three)
    assert identity(one) == identity(Wrapped(net, scale=1.0))
    assert identity(one) == f"module:{module_fingerprint(one)}:outputs:{probe_fingerprint(one, DIGITS)}"
    plan = ResolvedEval("fgsm", EPS, "linf", 60, 0, "cascade", "digits", None)
    keys = {run_key(python_source(model, "same", "digits", EPS, "linf"), plan, ["fgsm"], "30")
            for model in (one, three)}
    assert len(keys) == 2


def test_evaluate_model_keeps_a_run_per_function(net, tmp_path):
    plain, biased = Wrapped(net), Wrapped(net, shift=5.0)   # biased answers class 0 far more often
    store = ResultsStore(tmp_path / "r.sqlite")
    options = {"dataset": "digits", "eps": EPS, "suite": "fgsm", "n": 60, "batch_size": 30,
               "checks": False, "name": "same-name", "log": lambda _: None}
    one = robeval.evaluate_model(plain, store=store, **options)
    two = robeval.evaluate_model(biased, store=store, **options)
    assert two.run_id != one.run_id and two.batches_resumed == 0
    alone = robeval.evaluate_model(biased, **options)
    assert two.summary["accuracy"].equals(alone.summary["accuracy"])        # its own numbers
    assert one.summary.loc["clean", "accuracy"] != two.summary.loc["clean", "accuracy"]
    again = robeval.evaluate_model(plain, store=store, **options)
    assert again.run_id == one.run_id and again.batches_resumed == 2         # its own run resumes
    assert again.summary["accuracy"].equals(one.summary["accuracy"])
    model_config = store.run_record(one.run_id).config["model"]
    assert model_config["outputs"] == probe_fingerprint(plain, DIGITS)


def test_diagnose_model_keeps_a_record_per_function(net, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    options = {"dataset": "digits", "eps": EPS, "n": 20, "checks": "cheap", "pgd_steps": 2,
               "store": store, "name": "same-name", "log": lambda _: None}
    one = robeval.diagnose_model(Wrapped(net, scale=1.0), **options)
    three = robeval.diagnose_model(Wrapped(net, scale=3.0), **options)
    assert one.run_id != three.run_id
    assert set(store.runs()["id"]) == {one.run_id, three.run_id}
    assert store.notes(one.run_id)["kind"] == store.notes(three.run_id)["kind"] == "diagnose"
    again = robeval.diagnose_model(Wrapped(net, scale=1.0), **options)   # the same model: its record
    assert again.run_id == one.run_id and set(store.runs()["id"]) == {one.run_id, three.run_id}
    assert store.notes(three.run_id)["kind"] == "diagnose"


def test_attack_tensors_keeps_a_run_per_function(net, tmp_path):
    images, labels = torch.rand(8, *DIGITS), torch.arange(8)
    store = ResultsStore(tmp_path / "r.sqlite")
    options = {"eps": EPS, "suite": "fgsm", "batch_size": 8, "store": store, "name": "same-name"}
    one = robeval.attack_tensors(Wrapped(net), images, labels, **options)
    two = robeval.attack_tensors(Wrapped(net, shift=5.0), images, labels, **options)
    again = robeval.attack_tensors(Wrapped(net), images, labels, **options)
    assert two.run_id != one.run_id and two.batches_resumed == 0
    assert again.run_id == one.run_id and again.batches_resumed == 1
    assert store.run_record(one.run_id).config["model"]["outputs"] == probe_fingerprint(Wrapped(net), DIGITS)


@pytest.mark.parametrize("training", [False, True])
def test_a_random_model_keeps_its_identity_and_leaves_flags_and_rng_alone(net, training):
    model = Random(net).train(training)
    flags = [module.training for module in model.modules()]
    assert identity(model) == identity(model)
    state = torch.get_rng_state()
    first, second = probe_fingerprint(model, DIGITS), probe_fingerprint(model, DIGITS)
    assert first == second
    assert [module.training for module in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), state)
    assert probe_fingerprint(model, DIGITS) != probe_fingerprint(net, DIGITS)   # the noise counts


def test_a_random_model_resumes_its_own_run(net, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    options = {"dataset": "digits", "eps": EPS, "suite": "fgsm", "n": 30, "batch_size": 30,
               "checks": False, "store": store, "log": lambda _: None}
    one = robeval.evaluate_model(Random(net), **options)
    again = robeval.evaluate_model(Random(net).train(), **options)
    assert again.run_id == one.run_id and again.batches_resumed == 1


def test_outputs_hash_ignores_float_noise_not_real_changes():
    logits = torch.tensor([[1.0, 0.5, -0.25, 3.0], [0.125, -2.0, 0.0, 1.5]])
    assert outputs_hash(logits) == outputs_hash(logits + 1e-6)      # far inside a grid cell
    assert outputs_hash(logits) != outputs_hash(logits * 1.01)
    assert outputs_hash(logits) != outputs_hash(logits.double())    # the dtype counts
    assert outputs_hash(logits) != outputs_hash(logits.reshape(4, 2))


def test_non_finite_outputs_get_distinct_deterministic_fingerprints():
    nan, inf = float("nan"), float("inf")
    hashes = [outputs_hash(torch.tensor([[value, 1.0]])) for value in (nan, inf, -inf, 0.0, nan)]
    assert len(set(hashes)) == 4 and hashes[0] == hashes[-1]

    class NaNs(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((len(x), 10), nan)

    assert probe_fingerprint(NaNs(), DIGITS) == probe_fingerprint(NaNs(), DIGITS)


def test_the_probe_has_the_given_shape_on_the_models_device(net):
    shapes = []

    class Recording(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.append((tuple(x.shape), x.device.type, x.dtype))
            return x.flatten(1)[:, :10]

    probe_fingerprint(Recording(), (3, 8, 8), torch.float64)
    assert shapes == [((PROBE_IMAGES, 3, 8, 8), "cpu", torch.float64)]


def test_checkpoints_keep_their_sha256_and_hand_built_sources_their_weights(net):
    with_file = ModelSource(net, "file", "state_dict", "ab" * 32, 10, probe_fingerprint="cd" * 32)
    assert source_identity(with_file) == "ab" * 32
    hand_built = ModelSource(net, "hand", "python", None, 10)
    assert source_identity(hand_built) == f"module:{module_fingerprint(net)}"
