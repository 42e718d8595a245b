"""The engine vouches for every number it stores: output contract, private inputs, verified
breaks, majority verdicts for random models, the worst point for survivors, a visible gate."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import robeval
from robeval.attacks.base import ATTACKS, AttackOutcome, ThreatModel, evaluate_examples
from robeval.attacks.verify import REPEATS
from robeval.diagnostics.masking import binomial_tail, exceeds_rate, least_alarming
from robeval.errors import RobevalError
from robeval.results import ResultsStore

EPS = 8 / 255


def tiny_net(seed: int = 0) -> nn.Module:
    """A small untrained classifier of 3×8×8 images (its margins are small, so attacks break)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def data_for(model: nn.Module, n: int = 24, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Random images labelled by the model itself, so every point is clean-correct."""
    images = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return images, model(images).argmax(1)


def quiet(*_args) -> None:
    pass


# --- the model output contract ---------------------------------------------------------------

class NaNOnBright(nn.Module):
    """Finite logits, except NaN for images brighter than `threshold` on average."""

    def __init__(self, net: nn.Module, threshold: float):
        super().__init__()
        self.net, self.threshold = net, threshold

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        bright = x.flatten(1).mean(1) > self.threshold
        return torch.where(bright[:, None], torch.full_like(logits, float("nan")), logits)


def test_nan_weights_stop_the_evaluation_with_one_line_and_no_number(tmp_path):
    net = tiny_net()
    images, labels = data_for(net)
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    store = tmp_path / "r.sqlite"
    with pytest.raises(RobevalError) as error:
        robeval.attack_tensors(net, images, labels, eps=EPS, suite="pgd5", batch_size=8, store=store,
                               name="poisoned", log=quiet)
    message = str(error.value)
    assert "\n" not in message and "poisoned" in message and "non-finite" in message
    assert "batch 0" in message
    runs = ResultsStore(store, readonly=True).runs()
    assert (runs["status"] == "finished").sum() == 0


def test_nan_on_a_later_batch_names_that_batch_and_keeps_the_run_unfinished(tmp_path):
    net = tiny_net()
    images, labels = data_for(net, n=16)
    images[:8] *= 0.2                      # batch 0: dark, finite logits
    images[8:] = 0.6 + 0.4 * images[8:]    # batch 1: bright, NaN logits
    model = NaNOnBright(net, threshold=0.5)
    with torch.no_grad():
        labels = net(images).argmax(1)
    store = tmp_path / "r.sqlite"
    with pytest.raises(RobevalError) as error:
        robeval.attack_tensors(model, images, labels, eps=EPS, suite="fgsm", batch_size=8, store=store,
                               log=quiet)
    assert "batch 1" in str(error.value) and "images 8..15" in str(error.value)
    runs = ResultsStore(store, readonly=True).runs()
    assert list(runs["status"]) == ["running"] and list(runs["batches"]) == [1]


class ReturnsTuple(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x


class ReturnsClasses(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).argmax(1, keepdim=True).expand(-1, 10)


class DropsImages(nn.Module):
    """Right on one image, then returns fewer rows than images for larger batches."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[:max(1, len(x) // 2)]


@pytest.mark.parametrize("wrapper, words", [
    (ReturnsTuple, ["returned a tuple", "one tensor"]),
    (ReturnsClasses, ["torch.int64", "floating point"]),
    (DropsImages, ["returned shape", "must have shape"]),
])
def test_outputs_that_are_not_logits_get_one_line(wrapper, words):
    net = tiny_net()
    images, labels = data_for(net, n=8)
    with pytest.raises(RobevalError) as error:
        robeval.attack_tensors(wrapper(net), images, labels, eps=EPS, suite="fgsm", log=quiet)
    assert all(word in str(error.value) for word in words), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_models_in_other_precisions_are_evaluated(dtype):
    net = tiny_net()
    images, labels = data_for(net, n=16)
    reference = robeval.attack_tensors(net, images, labels, eps=EPS, suite="pgd10", log=quiet)
    other = robeval.attack_tensors(tiny_net().to(dtype), images, labels, eps=EPS, suite="pgd10", log=quiet)
    assert other.summary.loc["clean", "accuracy"] >= 0.8
    assert abs(other.summary.loc["pgd10", "accuracy"] - reference.summary.loc["pgd10", "accuracy"]) <= 0.25
    assert next(iter(tiny_net().to(dtype).parameters())).dtype == dtype


# --- inputs are never shared with the model --------------------------------------------------

class HalvesInPlace(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        x.mul_(0.5)
        return self.net(x)


class HalvesOutOfPlace(HalvesInPlace):
    def forward(self, x):
        return self.net(x * 0.5)


def test_a_model_that_mutates_its_input_changes_nothing_and_is_named(tmp_path):
    net = tiny_net()
    images, labels = data_for(net, n=32)
    before = images.clone()
    said = []
    in_place = robeval.attack_tensors(HalvesInPlace(net), images, labels, eps=EPS, suite="fgsm,pgd10",
                                      store=tmp_path / "a.sqlite", name="inplace", log=said.append)
    out_of_place = robeval.attack_tensors(HalvesOutOfPlace(net), images, labels, eps=EPS,
                                          suite="fgsm,pgd10", log=quiet)
    assert torch.equal(images, before)
    frame, reference = (result.store.per_sample(result.run_id) for result in (in_place, out_of_place))
    assert frame["robust"].tolist() == reference["robust"].tolist()
    assert frame["outcome_pgd10"].tolist() == reference["outcome_pgd10"].tolist()
    assert any("inplace changes its input tensor in place" in line for line in said)
    assert in_place.store.notes(in_place.run_id)["mutates_input"] is True


# --- only verified breaks count --------------------------------------------------------------

class Liar:
    """Claims every point broken; returns `offset` added to the clean images."""

    def __init__(self, threat: ThreatModel, offset: float, name: str):
        self.threat, self.offset, self.spec = threat, offset, name

    def run(self, model, images, labels, seed) -> AttackOutcome:
        adversarial = (images + self.offset).clamp(0, 1)
        outcome = evaluate_examples(model, adversarial, images, labels, self.threat.norm)
        outcome.robust = torch.zeros(len(images), dtype=torch.bool)
        return outcome


@pytest.fixture
def liars(monkeypatch):
    """`liar-zero` returns the clean images, `liar-far` examples 0.5 away (outside ε)."""
    monkeypatch.setitem(ATTACKS._entries, "liar-zero", lambda threat, options: Liar(threat, 0.0, "liar-zero"))
    monkeypatch.setitem(ATTACKS._entries, "liar-far", lambda threat, options: Liar(threat, 0.5, "liar-far"))


@pytest.mark.parametrize("suite, note", [("liar-zero", "unconfirmed"), ("liar-far", "projected")])
def test_claimed_breaks_count_only_when_a_fresh_pass_confirms_them(liars, suite, note):
    net = tiny_net()
    images, labels = data_for(net, n=16)
    result = robeval.attack_tensors(net, images, labels, eps=EPS, suite=suite, batch_size=8, log=quiet)
    frame = result.store.outcomes(result.run_id)
    assert result.summary.loc[suite, "accuracy"] > 0.5          # the liar's claim is not taken
    assert ((frame["outcome"] == "robust") == (frame["margin"] > 0)).all()
    assert (frame["perturbation_norm"] <= EPS + 1e-6).all()
    assert getattr(result.attack_notes[suite], note) > 0
    if note == "unconfirmed":
        assert result.attack_notes[suite].unconfirmed == 16
        assert any("not confirmed by a fresh forward pass" in line for line in result.note_lines())


class DropoutAtTest(nn.Module):
    """Dropout that stays on at test time: every pass is a different function."""

    def __init__(self, net: nn.Module, p: float = 0.5):
        super().__init__()
        self.net, self.p = net, p

    def forward(self, x):
        hidden = self.net[2](self.net[1](self.net[0](x)))
        return self.net[3](nn.functional.dropout(hidden, self.p, training=True))


def test_a_random_model_is_judged_by_the_majority_of_several_passes():
    net = tiny_net()
    images, labels = data_for(net, n=24)
    model = DropoutAtTest(net, p=0.2)
    result = robeval.attack_tensors(model, images, labels, eps=EPS, suite="aa-fast(queries=50)",
                                    batch_size=12, log=quiet)
    notes = result.attack_notes["aa-fast(queries=50)"]
    assert notes.majority == 2
    assert any(f"majority of {REPEATS} passes" in line for line in result.note_lines())
    frame = result.store.outcomes(result.run_id)
    attacked = frame[frame["outcome"] != "skipped"]
    assert ((attacked["outcome"] == "robust") == (attacked["margin"] > 0)).all()
    gate = result.store.attack_notes(result.run_id)["aa-fast(queries=50)"]
    assert gate.gate_batches == 2 and "determinism" in gate.gate_flags


def test_eot_follows_the_gradient_over_several_passes():
    from robeval.attacks import build_attack
    from robeval.attacks.cost import PassCounter

    net = tiny_net()
    images, labels = data_for(net, n=8)
    attack = build_attack("pgd3(eot=4)", ThreatModel(EPS))
    assert attack.spec == "pgd3(eot=4)"
    counter = PassCounter(DropoutAtTest(net))
    attack.run(counter, images, labels, 0)
    forwards, backwards = counter.take()
    plain = PassCounter(net)
    build_attack("pgd3", ThreatModel(EPS)).run(plain, images, labels, 0)
    assert forwards > plain.take()[0]
    with pytest.raises(RobevalError, match="eot=0"):
        build_attack("pgd3(eot=0)", ThreatModel(EPS))


def test_points_left_standing_record_the_worst_example_found():
    net = tiny_net()
    images, labels = data_for(net, n=48)
    result = robeval.attack_tensors(net, images, labels, eps=1 / 255, suite="aa-fast(queries=50)",
                                    log=quiet)
    frame = result.store.outcomes(result.run_id)
    standing = frame[frame["outcome"] == "robust"]
    assert len(standing) > 0
    with torch.no_grad():
        logits = net(images)
    clean_margin = (logits.gather(1, labels[:, None]).squeeze(1)
                    - logits.scatter(1, labels[:, None], float("-inf")).amax(1))
    clean = clean_margin[torch.as_tensor(standing["index"].to_numpy(copy=True))]
    attacked_margin = torch.as_tensor(standing["margin"].to_numpy(copy=True), dtype=torch.float32)
    assert (attacked_margin < clean - 1e-4).all()              # moved towards the boundary
    assert (torch.as_tensor(standing["perturbation_norm"].to_numpy(copy=True)) > 0).all()


# --- the gate is visible ---------------------------------------------------------------------

def test_the_gate_of_every_batch_is_stored_and_printed(tmp_path):
    net = tiny_net()
    images, labels = data_for(net, n=24)
    said = []
    result = robeval.attack_tensors(net, images, labels, eps=1 / 255, suite="fgsm,aa-fast(queries=50)",
                                    batch_size=12, store=tmp_path / "s.sqlite", log=said.append)
    notes = result.attack_notes["aa-fast(queries=50)"]
    assert notes.gate_batches == 2 and notes.gate_fired == 0 and notes.gate_flags == []
    assert result.attack_notes["fgsm"].gate_batches == 0
    assert any("masking gate fired on 0 of 2 batches" in line for line in said)
    stored = ResultsStore(tmp_path / "s.sqlite", readonly=True).attack_notes(result.run_id)
    assert stored["aa-fast(queries=50)"].gate_batches == 2


# --- flags decided by counts -----------------------------------------------------------------

def test_count_rules_have_the_stated_false_alarm_rate():
    assert least_alarming(16, 0.01) == 3 and least_alarming(200, 0.01) == 9
    assert not exceeds_rate(1, 10, 0.01)                     # never on one point
    assert exceeds_rate(20, 40, 0.25) and not exceeds_rate(12, 40, 0.25)
    assert binomial_tail(0, 10, 0.3) == 1.0 and binomial_tail(11, 10, 0.3) == 0.0
    assert abs(binomial_tail(1, 1, 0.3) - 0.3) < 1e-12
    # at the largest count that is not flagged, an honest model's chance of reaching it is above
    # the false-alarm rate; at the flagged count, below
    n, rate = 120, 0.2
    k = least_alarming(n, rate)
    assert binomial_tail(k, n, rate) < 1e-3 <= binomial_tail(k - 1, n, rate)
    assert binomial_tail(5000, 10_000, 0.5) > 0.49           # large n neither overflows nor fails
