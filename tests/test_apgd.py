"""robeval's APGD: agrees with pyautoattack's, exits early per sample, MALT ranks targets right."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robeval.attacks import ThreatModel, build_attack, parse_suite
from robeval.attacks.apgd import apgd_run, checkpoints, logit_targets, malt_scores, random_start
from robeval.attacks.pgd import perturb
from robeval.data import DataConfig, load_data, load_test_set
from robeval.errors import RobevalError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEED = 5
ITERS = 20
N_TEST = 256


def _frozen(model: nn.Module) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


@pytest.fixture(scope="module")
def train_batch(cifar10_mini_dir):
    config = DataConfig(dataset="cifar10", data_dir=str(cifar10_mini_dir), val_size=0,
                        train_subset=512, augment=False)
    return next(load_data(config).train.batches(512))


@pytest.fixture(scope="module")
def standard_net(cifar_mlp):
    """A one-hidden-layer MLP after 100 full-batch Adam steps on `train_batch` (the session's
    `cifar_mlp`: the fixtures below copy it)."""
    return cifar_mlp


@pytest.fixture(scope="module")
def standard(standard_net):
    """The standard MLP, frozen, attacked at ε=2/255."""
    return _frozen(copy.deepcopy(standard_net)), 2 / 255


@pytest.fixture(scope="module")
def adversarial(train_batch, standard_net):
    """The standard MLP fine-tuned on FGSM examples at ε=4/255 for 40 full-batch steps; attacked
    at ε=4/255."""
    images, labels = train_batch
    torch.manual_seed(0)
    model = copy.deepcopy(standard_net).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        x_adv, _ = perturb(model, images, labels, 4 / 255, 1, random_start=True, step_size=5 / 255)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_adv), labels).backward()
        optimizer.step()
    return _frozen(model), 4 / 255


@pytest.fixture(scope="module")
def test_points(cifar10_mini_dir):
    test = load_test_set("cifar10", cifar10_mini_dir, N_TEST)
    return test.images.float() / 255, test.labels


def correct_points(model, points):
    """The clean-correct points, as the evaluation engine hands them to an attack."""
    images, labels = points
    with torch.no_grad():
        keep = model(images).argmax(1) == labels
    return images[keep], labels[keep]


@pytest.mark.parametrize("which", ["standard", "adversarial"])
@pytest.mark.parametrize("spec", [f"apgd-ce(iters={ITERS})", f"apgd-t(iters={ITERS},targets=3)"])
def test_outcomes_agree_with_pyautoattack(which, spec, test_points, request):
    model, eps = request.getfixturevalue(which)
    images, labels = correct_points(model, test_points)
    ours = build_attack(spec, ThreatModel(eps)).run(model, images, labels, SEED)
    theirs = build_attack(f"pyautoattack-{spec}", ThreatModel(eps)).run(model, images, labels, SEED)
    broken_ours, broken_theirs = ~ours.robust, ~theirs.robust
    assert 0 < int(broken_theirs.sum()) < len(labels)  # a test that can tell the two apart
    agreement = float((broken_ours == broken_theirs).double().mean())
    assert agreement >= 0.99, (agreement, int(broken_ours.sum()), int(broken_theirs.sum()))
    assert int(broken_ours.sum()) >= int(broken_theirs.sum())
    assert float(ours.perturbation_norm.max()) <= eps + 1e-6
    assert torch.equal(ours.robust, ours.margin > 0)


def test_early_exit_leaves_the_other_trajectories_alone(adversarial, test_points):
    model, eps = adversarial
    images, labels = correct_points(model, test_points)
    torch.manual_seed(SEED)
    start = random_start(images.shape, eps, "linf", images)
    whole = apgd_run(model, images, labels, start, eps=eps, norm="linf", iters=ITERS)
    assert whole.broken.any() and not whole.broken.all()
    assert (whole.iterations[whole.broken] < ITERS).any()   # broken points left early
    assert (whole.iterations[~whole.broken] == ITERS).all()
    subset = torch.arange(len(labels)) % 3 != 1
    part = apgd_run(model, images[subset], labels[subset], start[subset], eps=eps, norm="linf",
                    iters=ITERS)
    assert torch.equal(part.broken, whole.broken[subset])
    assert torch.equal(part.iterations, whole.iterations[subset])
    assert torch.allclose(part.adversarial, whole.adversarial[subset], atol=1e-6)


def test_iterations_are_counted_per_sample(adversarial, test_points):
    model, eps = adversarial
    images, labels = correct_points(model, test_points)
    outcome = build_attack(f"apgd-t(iters={ITERS},targets=2)", ThreatModel(eps)).run(
        model, images, labels, SEED)
    assert outcome.iterations is not None and len(outcome.iterations) == len(labels)
    assert (outcome.iterations[outcome.robust] == 2 * ITERS).all()   # both targets, all iterations
    assert (outcome.iterations[~outcome.robust] < 2 * ITERS).all()


def test_l2_stays_in_the_ball_and_breaks_points(standard, test_points):
    model, _ = standard
    images, labels = correct_points(model, test_points)
    outcome = build_attack(f"apgd-ce(iters={ITERS})", ThreatModel(0.1, "l2")).run(model, images, labels, SEED)
    assert float(outcome.perturbation_norm.max()) <= 0.1 + 1e-5
    assert 0 < int((~outcome.robust).sum()) < len(labels)
    assert float(outcome.adversarial.min()) >= 0 and float(outcome.adversarial.max()) <= 1


def test_attack_is_seeded_and_leaves_the_rng_alone(standard, test_points):
    model, eps = standard
    images, labels = correct_points(model, test_points)
    attack = build_attack(f"apgd-ce(iters={ITERS})", ThreatModel(eps))
    state = torch.random.get_rng_state()
    first = attack.run(model, images, labels, SEED)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = attack.run(model, images, labels, SEED)
    assert torch.equal(first.adversarial, second.adversarial)


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), as iteration counts
    assert checkpoints(100) == {21: 22, 40: 19, 56: 16, 69: 13, 79: 10, 86: 7, 92: 6, 98: 6}
    assert min(checkpoints(20).values()) == 1 and list(checkpoints(20))[0] == 3


def test_names_options_and_errors():
    threat = ThreatModel(8 / 255)
    specs = [a.spec for a in parse_suite(
        "apgd-ce, apgd_dlr(restarts=2), apgd-t(targets=9,select=logits), apgd-t(select=MALT,targets=3),"
        "pyautoattack-apgd-ce(iters=20)", threat)]
    assert specs == ["apgd-ce", "apgd-dlr(restarts=2)", "apgd-t", "apgd-t(targets=3,select=malt)",
                     "pyautoattack-apgd-ce(iters=20)"]
    for spec, words in [("apgd-ce(eot=2)", ["no option eot", "pyautoattack-apgd-ce"]),
                        ("apgd-ce(targets=3)", ["no option targets"]),
                        ("apgd-t(select=random)", ["select=random", "logits or malt"]),
                        ("apgd-t(targets=0)", ["targets=0", "positive integer"])]:
        with pytest.raises(RobevalError) as error:
            build_attack(spec, threat)
        assert all(word in str(error.value) for word in words)


# --- MALT --------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_malt_score_is_the_distance_to_each_boundary_of_a_linear_model(norm):
    torch.manual_seed(1)
    model = _frozen(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6)))
    images = torch.rand(16, 3, 8, 8)
    labels = model(images).argmax(1)
    scores = malt_scores(model, images, labels, norm)
    weight, logits = model[1].weight, model(images)
    for i in range(len(images)):
        y = int(labels[i])
        for c in range(6):
            if c == y:
                assert scores[i, c] == float("inf")
                continue
            direction = weight[y] - weight[c]
            dual = direction.abs().sum() if norm == "linf" else direction.norm()
            distance = (logits[i, y] - logits[i, c]) / dual
            assert torch.isclose(scores[i, c], distance, rtol=1e-4)
            # moving by just over that distance towards c crosses the y/c boundary, just under does not
            step = direction.sign() if norm == "linf" else direction / direction.norm()
            for factor, crossed in ((1.001, True), (0.999, False)):
                moved = images[i].flatten() - factor * distance * step
                z = model[1](moved)
                assert bool(z[c] > z[y]) == crossed
    # the ranking is the boundary distances', not the logits'
    order = scores.argsort(1)[:, :5]
    assert (order != logit_targets(logits, labels, 5)).any()


def test_malt_targets_break_at_least_what_logit_targets_break(adversarial, test_points):
    model, eps = adversarial
    images, labels = correct_points(model, test_points)
    threat = ThreatModel(eps)
    malt = build_attack(f"apgd-t(iters={ITERS},targets=3,select=malt)", threat).run(
        model, images, labels, SEED)
    logits = build_attack(f"apgd-t(iters={ITERS},targets=3)", threat).run(model, images, labels, SEED)
    assert int((~logits.robust).sum()) > 0
    assert int((~malt.robust).sum()) >= int((~logits.robust).sum())
