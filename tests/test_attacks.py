"""Our PGD/FGSM and the suite grammar: correctness against a reference, strength ordering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robeval.attacks import PGDAttack, ThreatModel, build_attack, parse_suite
from robeval.attacks.base import split_suite
from robeval.errors import RobevalError, UnknownNameError
from robeval.models import build_model
from robeval.runs import load_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def trained(trained_cifar_run):
    model = load_model(trained_cifar_run)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def robust_accuracy(attack, model, images, labels, seed=0) -> float:
    clean = model(images).argmax(1) == labels
    outcome = attack.run(model, images[clean], labels[clean], seed)
    return float(outcome.robust.sum()) / len(labels)


def reference_pgd(model, images, labels, eps, steps, step, seed):
    """Textbook L∞ PGD with a random start (Madry et al.), evaluated at the last iterate."""
    torch.manual_seed(seed)
    delta = torch.empty_like(images).uniform_(-eps, eps)
    delta = (images + delta).clamp(0, 1) - images
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(images + delta), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
        delta = (images + delta).clamp(0, 1) - images
    with torch.no_grad():
        return model(images + delta).argmax(1) == labels


def test_suite_grammar_splits_at_top_level_commas():
    assert split_suite("fgsm, pgd10(step=1/255,restarts=2),aa") == [
        "fgsm", "pgd10(step=1/255,restarts=2)", "aa"]
    attacks = parse_suite("fgsm,pgd200(step=1/255,restarts=2,loss=dlr),pgd3-smooth",
                          ThreatModel(4 / 255))
    pgd200 = attacks[1]
    assert (pgd200.steps, pgd200.restarts, pgd200.loss_name) == (200, 2, "dlr")
    assert pgd200.step == pytest.approx(1 / 255)
    assert attacks[2].smooth and attacks[2].steps == 3


@pytest.mark.parametrize("suite,message", [
    ("pgd10,nope", "unknown attack 'nope'; known: .*fgsm.*pgdK"),
    ("pgd10(step=1/255", "unbalanced"),
    ("pgd10,,fgsm", "empty attack"),
    ("pgd10(colour=red)", "has no option colour"),
    ("pgd10(step)", "expected key=value"),
    ("fgsm,fgsm", "same attack twice"),
])
def test_bad_suites_give_one_line_errors(suite, message):
    with pytest.raises(RobevalError, match=message) as error:
        parse_suite(suite, ThreatModel(EPS))
    assert "\n" not in str(error.value)


def test_unknown_attack_is_an_unknown_name_error():
    with pytest.raises(UnknownNameError):
        build_attack("pgdx", ThreatModel(EPS))


def test_default_step_sizes_follow_the_papers():
    assert build_attack("fgsm", ThreatModel(EPS)).step == pytest.approx(EPS)
    assert build_attack("pgd1", ThreatModel(EPS)).step == pytest.approx(EPS)
    # Bag of Tricks: PGD-10 with step 2/255 at 8/255; SAT: PGD-200 with step 1/255 at 4/255
    assert build_attack("pgd10", ThreatModel(EPS)).step == pytest.approx(2 / 255)
    assert build_attack("pgd200", ThreatModel(4 / 255)).step == pytest.approx(1 / 255)
    assert build_attack("pgd2", ThreatModel(EPS)).step == pytest.approx(1.25 * EPS)


@pytest.mark.slow
def test_our_pgd_agrees_with_a_reference_pgd(trained, cifar_test_batch):
    images, labels = cifar_test_batch
    clean = trained(images).argmax(1) == labels
    ours = robust_accuracy(build_attack("pgd10", ThreatModel(EPS)), trained, images, labels)
    reference = float((reference_pgd(trained, images, labels, EPS, 10, 2 / 255, 0)
                       & clean).sum()) / len(labels)
    assert 0 < ours < float(clean.float().mean())
    assert abs(ours - reference) <= 0.01 + 1e-9, (ours, reference)


@pytest.mark.slow
def test_accuracy_does_not_increase_from_fgsm_to_pgd10_to_pgd50(trained, cifar_test_batch):
    images, labels = cifar_test_batch
    accuracies = [robust_accuracy(build_attack(spec, ThreatModel(EPS)), trained, images, labels)
                  for spec in ("fgsm", "pgd10", "pgd50")]
    assert accuracies[0] >= accuracies[1] >= accuracies[2], accuracies
    assert accuracies[0] > accuracies[2]


def test_smooth_gradient_pgd1_is_at_least_as_strong_as_pgd1(trained, cifar_test_batch):
    images, labels = cifar_test_batch
    plain = robust_accuracy(build_attack("pgd1", ThreatModel(EPS)), trained, images, labels)
    smooth = robust_accuracy(build_attack("pgd1-smooth", ThreatModel(EPS)), trained, images,
                             labels)
    assert smooth <= plain, (smooth, plain)


def test_smooth_gradients_leave_the_forward_pass_and_the_model_unchanged(trained,
                                                                       cifar_test_batch):
    images, labels = cifar_test_batch
    before = [type(m) for m in trained.modules()]
    attack = build_attack("pgd2-smooth", ThreatModel(EPS))
    outcome = attack.run(trained, images[:32], labels[:32], seed=0)
    assert [type(m) for m in trained.modules()] == before
    with torch.no_grad():
        assert torch.equal(outcome.robust, trained(outcome.adversarial).argmax(1) == labels[:32])


@pytest.mark.slow
def test_broken_samples_stop_costing_iterations(trained, cifar_test_batch):
    images, labels = cifar_test_batch
    clean = trained(images).argmax(1) == labels
    x, y = images[clean], labels[clean]
    outcome = build_attack("pgd20(restarts=2)", ThreatModel(EPS)).run(trained, x, y, seed=1)
    first = build_attack("pgd20", ThreatModel(EPS)).run(trained, x, y, seed=1)  # its 1st restart
    assert (outcome.iterations[outcome.robust] == 40).all()
    # A point broken at iterate k of the first restart costs exactly k (and no more); one that
    # survived it costs its 20 and then whatever the second restart took, up to 20 more: a point
    # broken at the last of the 40 iterations costs 40 and is still broken.
    broken_early = ~first.robust
    assert torch.equal(outcome.iterations[broken_early], first.iterations[broken_early])
    assert (~outcome.robust[broken_early]).all() and (first.iterations[broken_early] < 20).any()
    later = outcome.iterations[first.robust & ~outcome.robust]
    assert ((later >= 20) & (later <= 40)).all()
    assert (outcome.margin[~outcome.robust] <= 0).all() and (outcome.margin[outcome.robust] > 0).all()


def test_attack_is_seeded_and_leaves_rng_and_parameters_alone(cifar_test_batch):
    model = build_model("cnn-small", "relu", mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    images, labels = cifar_test_batch
    images, labels = images[:64], model(images[:64]).argmax(1)
    attack = build_attack("pgd5", ThreatModel(EPS))
    state = torch.get_rng_state()
    first = attack.run(model, images, labels, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    second = attack.run(model, images, labels, seed=3)
    assert torch.equal(first.robust, second.robust) and torch.equal(first.margin, second.margin)
    assert all(p.grad is None for p in model.parameters()) and not model.training


@pytest.mark.parametrize("spec,norm,eps", [
    ("pgd5", "l2", 0.5), ("pgd5(loss=dlr)", "linf", EPS), ("pgd5(loss=margin,targeted=1)", "linf", EPS),
    ("fgsm", "linf", EPS), ("pgd3(random_start=0)", "l2", 0.25),
])
def test_perturbations_stay_in_the_threat_model(trained, cifar_test_batch, spec, norm, eps):
    images, labels = cifar_test_batch
    outcome = build_attack(spec, ThreatModel(eps, norm)).run(trained, images[:64], labels[:64], 0)
    assert (outcome.perturbation_norm <= eps + 1e-5).all()
    assert outcome.adversarial.min() >= 0 and outcome.adversarial.max() <= 1


def test_more_restarts_are_never_weaker(trained, cifar_test_batch):
    images, labels = cifar_test_batch
    one = robust_accuracy(PGDAttack(ThreatModel(EPS), 5), trained, images, labels)
    three = robust_accuracy(PGDAttack(ThreatModel(EPS), 5, restarts=3), trained, images, labels)
    assert three <= one
