"""Gradient-masking checks: signs that a robustness evaluation by gradient attacks is unreliable.

Each check is `check_NAME(model, images, labels, *, eps, norm="linf", seed=0, ...)` and returns a
`CheckResult`; the first paragraph of its docstring explains what its flag means and is copied
into the result for reports, the following ones give its rule and tolerance. `CHECKS` maps names
to the functions, `CHEAP_CHECKS` names the ones that `robeval attack` runs by default, and
`run_checks` runs a selection.

Attack-based checks count a point as robust only if it is classified correctly and the attack
fails on it, and compare attacks on the same images with the same seed. Comparisons that two
attacks could legitimately decide either way allow for that with McNemar's test: of the points
on which the two disagree, an attack that is not really stronger wins each one with probability
one half, so the excess of one side over the other has standard deviation √(disagreements); a
flag needs an excess above `Z_NOISE` = 3 standard deviations (a false alarm rate of about 0.1%)
and above a floor stated by each check.

Every check runs the model in eval mode (the modules' training flags are restored afterwards),
seeds torch's RNG with `seed` and restores the CPU and CUDA RNG states and the trace function
afterwards, and takes gradients with respect to the input only, so parameters accumulate none.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robeval.attacks.autoattack import preserved_global_state
from robeval.attacks.base import ThreatModel, build_attack
from robeval.attacks.losses import cross_entropy, dlr, input_gradient
from robeval.attacks.steps import get_norm
from robeval.diagnostics.gradients import (
    clip_to_box,
    fgsm_direction,
    loss_and_grad,
    loss_at,
    per_sample_dot,
    random_delta,
)
from robeval.errors import RobevalError

Z_NOISE = 3.0                 # standard deviations of attack noise a flag must exceed
ITERATIONS_FLOOR = 0.01       # more_iterations, larger_eps, fgsm_vs_pgd: 1 percentage point
BLACK_BOX_FLOOR = 0.05        # black_box: 5 percentage points
FALSE_ALARM = 1e-3            # count rules: chance that an honest model raises the flag
ZERO_GRADIENT_RATE = 0.01     # gradients: share of zero-gradient points an honest model may have
SHATTERED_RATE = 0.05         # gradient_quality: share of points with noise-like gradients allowed
MARGIN_ONLY_SHARE = 0.25      # loss_dependence: share of breaks only the margin loss may find
REPEAT_TOLERANCE = 1e-4       # determinism: identical passes, relative to the logit scale
SPLIT_TOLERANCE = 1e-2        # determinism: the same images in half-size batches
ROW_SUM_TOLERANCE = 1e-3      # logits: |row sum − 1| of probabilities / of exp(log-probabilities)
FLAT_RETAINED = 0.5          # larger_eps: at most half the ε-robust points may survive 4ε
ALIGNMENT_FLOOR = 0.1        # gradient_quality: a point's cos(∇L(x), ∇L(x+η)) below this is noise
FGSM_GAIN_FLOOR = 0.1        # gradient_quality: a point's achieved / predicted FGSM rise below this
AUTOATTACK_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")  # its n_classes check assumes these


@dataclass
class CheckResult:
    """The verdict of one check; `evidence` holds JSON-ready numbers behind it."""

    name: str           # e.g. "more_iterations"
    passed: bool        # False: the check raised its flag
    flag: str | None    # one line describing the flag when raised, else None
    evidence: dict      # plain floats, ints, bools, strings and lists of them
    explanation: str    # the first paragraph of the check's docstring


CheckFn = Callable[..., CheckResult]


# --- shared helpers --------------------------------------------------------------------------

@contextlib.contextmanager
def prepared(model: nn.Module, seed: int) -> Iterator[None]:
    """Eval mode, gradients enabled and a seeded RNG for the block; flags and RNG restored after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with preserved_global_state(), torch.enable_grad():
            torch.manual_seed(seed)
            yield
    finally:
        for module, training in flags:
            module.training = training


def explanation(check: CheckFn) -> str:
    """The first paragraph of a check's docstring, on one line."""
    return " ".join(inspect.getdoc(check).split("\n\n")[0].split())


def result(name: str, flag: str | None, evidence: dict) -> CheckResult:
    """A CheckResult for the check registered as `name`; `flag` None means passed."""
    return CheckResult(name=name, passed=flag is None, flag=flag, evidence=strict_json(evidence),
                       explanation=explanation(CHECKS[name]))


def strict_json(value):
    """`value` with every infinite or NaN float written as a string ("inf", "-inf", "nan")."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def correctly_classified(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Per-sample clean correctness, a CPU bool tensor."""
    with torch.no_grad():
        return (model(images).argmax(1) == labels).cpu()


def robust_under(model: nn.Module, spec: str, images: Tensor, labels: Tensor, threat: ThreatModel,
                 seed: int, correct: Tensor) -> Tensor:
    """Per-sample robustness (correct and not broken) under the attack `spec`, on the CPU."""
    outcome = build_attack(spec, threat).run(model, images, labels, seed)
    return outcome.robust.cpu() & correct


def accuracy(robust: Tensor) -> float:
    """The fraction of True entries (0 for an empty tensor)."""
    return float(robust.double().mean()) if len(robust) else 0.0


def compare(weaker: Tensor, stronger: Tensor, floor: float, noise: bool) -> dict:
    """Whether the stronger attack leaves markedly more points robust than the weaker one.

    The excess is the number of points only the weaker attack broke minus those only the
    stronger one broke; it must exceed one sample, `floor` of the points and, with `noise`,
    `Z_NOISE`·√(disagreements) (McNemar's test, see the module doc) to count as an increase.
    """
    only_weaker = int((stronger & ~weaker).sum())
    only_stronger = int((weaker & ~stronger).sum())
    spread = Z_NOISE * math.sqrt(only_weaker + only_stronger) if noise else 0.0
    allowed = max(1.0, floor * len(weaker), spread)
    return {"weaker_accuracy": accuracy(weaker), "stronger_accuracy": accuracy(stronger),
            "only_weaker_broke": only_weaker, "only_stronger_broke": only_stronger,
            "allowed_excess": round(allowed, 3), "increase": only_weaker - only_stronger > allowed}


def binomial_tail(count: int, n: int, rate: float) -> float:
    """P(X ≥ count) for X ~ Binomial(n, rate): how likely `count` hits are when each of `n`
    points is hit with probability `rate`."""
    if count <= 0:
        return 1.0
    if count > n:
        return 0.0
    if rate <= 0 or rate >= 1:
        return 0.0 if rate <= 0 else 1.0
    log_rate, log_rest = math.log(rate), math.log1p(-rate)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                                 + k * log_rate + (n - k) * log_rest) for k in range(count, n + 1)))


def exceeds_rate(count: int, n: int, rate: float, false_alarm: float = FALSE_ALARM) -> bool:
    """Whether `count` of `n` points is more than a model with hit rate `rate` shows, at the
    given false-alarm rate (one-sided exact binomial test); never on fewer than 2 points."""
    return count >= 2 and binomial_tail(count, n, rate) < false_alarm


def least_alarming(n: int, rate: float, false_alarm: float = FALSE_ALARM) -> int:
    """The smallest count of `n` points that `exceeds_rate` flags (n + 1: none can)."""
    return next((count for count in range(2, n + 1) if exceeds_rate(count, n, rate, false_alarm)), n + 1)


def input_gradients(model: nn.Module, images: Tensor, labels: Tensor,
                    loss_fn: Callable[[Tensor, Tensor], Tensor] = cross_entropy) -> Tensor:
    """Per-sample gradients of a per-sample loss with respect to the input."""
    x = images.detach().clone().requires_grad_(True)
    return input_gradient(loss_fn(model(x), labels).sum(), x).detach()


def num_classes(model: nn.Module, images: Tensor) -> int:
    """The size of the model's output."""
    with torch.no_grad():
        return int(model(images[:1]).shape[-1])


# --- checks ----------------------------------------------------------------------------------

def check_determinism(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float | None = None,
                      norm: str = "linf", seed: int = 0) -> CheckResult:
    """The model gives different outputs for the same input.

    A randomised model (noise, random transformations or dropout at test time) or one whose
    output depends on the other images in the batch hands each attack step the gradient of a
    different function than the one that is finally evaluated, so a deterministic attack
    underestimates what an attack aware of the randomness (EOT) achieves; its accuracy under
    PGD is not a robustness estimate.

    Rule: the logits of two identical passes may differ by at most 1e-4 of the logit scale
    (max(1, max |logit|)), those of the same images in half-size batches by at most 1e-2 of it
    (another batch size may pick other kernels, TF32 on GPU among them); more is flagged.
    """
    with prepared(model, seed), torch.no_grad():
        first, second = model(images), model(images)
        halves = torch.cat([model(part) for part in images.split(max(1, (len(images) + 1) // 2))])
    scale = max(1.0, float(first.abs().nan_to_num(0.0).max()))
    repeat, split = max_difference(first, second) / scale, max_difference(first, halves) / scale
    evidence = {"repeat_difference": repeat, "split_difference": split, "logit_scale": scale,
                "changed_predictions": int(((first.argmax(1) != second.argmax(1))
                                            | (first.argmax(1) != halves.argmax(1))).sum())}
    flag = None
    if repeat > REPEAT_TOLERANCE or split > SPLIT_TOLERANCE:
        flag = (f"the same images gave logits differing by {max(repeat, split):.2g} of their scale "
                f"({evidence['changed_predictions']} predictions changed): randomised or batch-dependent")
    return result("determinism", flag, evidence)


def max_difference(a: Tensor, b: Tensor) -> float:
    """The largest |a − b|; equal entries (infinities, NaNs on both sides) differ by 0, others
    involving NaN by infinity."""
    diff = (a - b).abs()
    diff[(a == b) | (torch.isnan(a) & torch.isnan(b))] = 0.0
    return float(diff.nan_to_num(nan=math.inf).max()) if diff.numel() else 0.0


def check_logits(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float | None = None,
                 norm: str = "linf", seed: int = 0) -> CheckResult:
    """The model seems to output probabilities or log-probabilities instead of logits.

    Attacks put the model's outputs into cross-entropy, which applies its own softmax. Applied
    to probabilities, values in [0, 1], that second softmax keeps every class within a factor e
    of the others, so the loss hardly varies and its gradients are small: the attack is weakened
    without the model being robust. Log-probabilities
    are harmless when they come from a stable log-softmax (a shift of the logits, to which CE,
    DLR and margin losses are blind) but saturate to 0 and −inf when computed as log(softmax);
    the check cannot tell the two apart, so confirm which one the model computes.

    Rule: flagged when every row is non-negative and sums to 1 within 1e-3 (probabilities), or
    every row's exponentials sum to 1 within 1e-3 (log-probabilities).
    """
    with prepared(model, seed), torch.no_grad():
        outputs = model(images).double()
    sums, exp_sums = outputs.sum(1), outputs.exp().sum(1)
    probabilities = bool((outputs >= -1e-6).all() and ((sums - 1).abs() <= ROW_SUM_TOLERANCE).all())
    log_probabilities = bool(((exp_sums - 1).abs() <= ROW_SUM_TOLERANCE).all())
    kind = "probabilities" if probabilities else "log-probabilities" if log_probabilities else "logits"
    evidence = {"outputs": kind, "min_output": float(outputs.min()), "max_output": float(outputs.max()),
                "max_row_sum_error": float((sums - 1).abs().max()),
                "max_exp_sum_error": float((exp_sums - 1).abs().max())}
    flag = None if kind == "logits" else f"every output row looks like {kind}, not logits"
    return result("logits", flag, evidence)


def check_gradients(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float | None = None,
                    norm: str = "linf", seed: int = 0, rate: float = ZERO_GRADIENT_RATE) -> CheckResult:
    """Many correctly classified points have an all-zero or non-finite input gradient.

    Gradient attacks have nothing to follow at such points: the L∞ step is the sign of the
    gradient (zero) and NaN/inf corrupt the iterate. Non-differentiable preprocessing
    (quantisation, JPEG, thresholds) makes gradients zero almost everywhere, and a softmax
    saturated in float32 (huge logits, e.g. a temperature far below 1) makes cross-entropy
    gradients underflow to exactly zero: the model looks robust to PGD but is not.

    Rule: the cross-entropy gradient of an honest float32 network is exactly zero only when
    every other class's probability underflows (logit margins above ~100), which trained
    classifiers practically never reach. Flagged when the count of correctly classified points
    with an all-zero or non-finite gradient is more than a model with `rate` (1%) of such points
    shows at a false-alarm rate of 0.1% (one-sided binomial test; at least 2 points, e.g. 3 of
    16 or 9 of 200).
    """
    with prepared(model, seed):
        correct = correctly_classified(model, images, labels)
        grad = input_gradients(model, images, labels).flatten(1)
    zero = (grad == 0).all(1).cpu() & correct
    nonfinite = (~torch.isfinite(grad)).any(1).cpu() & correct
    n_correct = int(correct.sum())
    count = int((zero | nonfinite).sum())
    evidence = {"correct": n_correct, "zero_gradients": int(zero.sum()),
                "nonfinite_gradients": int(nonfinite.sum()), "fraction": count / max(n_correct, 1),
                "rate": rate, "flag_from": least_alarming(n_correct, rate)}
    flag = None
    if exceeds_rate(count, n_correct, rate):
        flag = (f"{count} of {n_correct} correctly classified points have zero or non-finite input "
                "gradients: gradient attacks cannot move them")
    return result("gradients", flag, evidence)


def check_autoattack_checks(model: nn.Module, images: Tensor, labels: Tensor, *,
                            eps: float | None = None, norm: str = "linf", seed: int = 0) -> CheckResult:
    """pyautoattack's own sanity checks warned about the model.

    AutoAttack (Croce & Hein, 2020) checks before attacking whether the model is randomised
    (outputs change between passes), outputs probabilities, calls autograd in its forward pass
    (a dynamic or adaptive defence), has zero DLR-loss gradients at some points, and has enough
    classes for its targeted attacks; any of these makes its standard evaluation unreliable.

    Rule: pyautoattack's `check_randomized`, `check_range_output`, `check_dynamic`,
    `check_zero_gradients` (on the DLR gradients of the correctly classified points, as APGD-DLR
    computes them) and `check_n_classes` (for the standard version's attacks) run with their own
    thresholds; flagged when any of them warns. Their warnings are the evidence.
    """
    with prepared(model, seed):
        warnings = pyautoattack_warnings(model, images, labels)
    evidence = {"warnings": warnings, "checks": sorted(PYAUTOATTACK_CHECKS)}
    flag = None
    if warnings:
        flag = f"pyautoattack warned: {'; '.join(warnings)}"
    return result("autoattack_checks", flag, evidence)


class Collector:
    """A stand-in logger that keeps what pyautoattack's checks warn."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, message: object) -> None:
        """Keep one warning."""
        self.messages.append(str(message))


PYAUTOATTACK_CHECKS = ("check_randomized", "check_range_output", "check_dynamic",
                       "check_zero_gradients", "check_n_classes")


def pyautoattack_warnings(model: nn.Module, images: Tensor, labels: Tensor) -> list[str]:
    """Run pyautoattack's checks with a collecting logger; returns `name: message` lines."""
    from pyautoattack import checks

    logger = Collector()
    checks.check_randomized(model, images, labels, logger=logger)
    n_classes = checks.check_range_output(model, images, logger=logger)
    dynamic_check(checks, model, images, logger)
    correct = correctly_classified(model, images, labels).to(images.device)
    if correct.any():
        grad = input_gradients(model, images[correct], labels[correct], loss_fn=dlr)
        checks.check_zero_gradients(grad, logger=logger)
    checks.check_n_classes(n_classes, list(AUTOATTACK_STANDARD), 9, 9, logger=logger)
    return logger.messages


def dynamic_check(checks, model: nn.Module, images: Tensor, logger: Collector) -> None:
    """pyautoattack's `check_dynamic` on fresh call counters; its counters and the trace
    function it removes (`sys.settrace(None)`) are put back afterwards."""
    counters, trace = dict(checks.funcs), sys.gettrace()
    checks.funcs.update(dict.fromkeys(counters, 0))
    try:
        checks.check_dynamic(model, images, False, logger=logger)
    finally:
        sys.settrace(trace)
        checks.funcs.update(counters)


def check_fgsm_vs_pgd(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float,
                      norm: str = "linf", seed: int = 0, floor: float = ITERATIONS_FLOOR) -> CheckResult:
    """A single gradient step (FGSM) is stronger than ten (PGD-10) at the same ε.

    Iterating can only help an attack on a well-behaved loss surface. When one large step from
    the clean image beats small iterated steps, the loss surface near the data is locally
    flat or misleading (gradient masking) while a larger move still finds adversarial examples,
    so iterative attacks are not finding them either.

    Rule: flagged when the points only FGSM broke outnumber those only PGD-10 broke by more than
    one sample, `floor` (1 percentage point) of the images and 3·√(disagreements) (see the
    module doc).
    """
    return _attack_pair("fgsm_vs_pgd", model, images, labels, ThreatModel(eps, norm), seed,
                        ("fgsm", "pgd10"), floor, "FGSM is stronger than PGD-10")


def _attack_pair(name: str, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel,
                 seed: int, specs: tuple[str, str], floor: float, message: str) -> CheckResult:
    """Compare two attacks (the second expected stronger) at the same threat model."""
    with prepared(model, seed):
        correct = correctly_classified(model, images, labels)
        weaker, stronger = (robust_under(model, spec, images, labels, threat, seed, correct)
                            for spec in specs)
    comparison = compare(weaker, stronger, floor, noise=True)
    evidence = {"weaker": specs[0], "stronger": specs[1], "n": len(correct), **comparison}
    flag = None
    if comparison["increase"]:
        flag = (f"{message}: accuracy {accuracy(weaker):.1%} under {specs[0]} vs "
                f"{accuracy(stronger):.1%} under {specs[1]}")
    return result(name, flag, evidence)


def check_more_iterations(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float,
                          norm: str = "linf", seed: int = 0, floor: float = ITERATIONS_FLOOR) -> CheckResult:
    """Robust accuracy goes up when PGD gets more iterations or restarts.

    A stronger run of the same attack cannot find fewer adversarial examples on a fixed
    function. robeval's PGD-50 repeats PGD-10's first ten iterates (same seed, same step ε/4)
    and PGD-10 with 3 restarts begins with PGD-10's run, and a point counts as broken as soon as
    any iterate is misclassified, so for a deterministic model these accuracies can only go
    down. An increase means the prediction at the same input changed between runs: the model is
    randomised or depends on the batch, and its PGD accuracy is not a robustness estimate.

    Rule: PGD-10 is compared with PGD-50 and with PGD-10 (3 restarts); because the runs are
    nested there is no attack noise to allow for, only float rounding at iterates on the decision
    boundary, so either increase may be at most one sample and `floor` (1 percentage point).
    """
    threat = ThreatModel(eps, norm)
    with prepared(model, seed):
        correct = correctly_classified(model, images, labels)
        runs = {spec: robust_under(model, spec, images, labels, threat, seed, correct)
                for spec in ("pgd10", "pgd50", "pgd10(restarts=3)")}
    pairs = {spec: compare(runs["pgd10"], runs[spec], floor, noise=False)
             for spec in ("pgd50", "pgd10(restarts=3)")}
    evidence = {"n": len(correct), "accuracy": {spec: accuracy(robust) for spec, robust in runs.items()},
                "versus_pgd10": pairs}
    raised = [spec for spec, pair in pairs.items() if pair["increase"]]
    flag = None
    if raised:
        flag = (f"robust accuracy rose from {accuracy(runs['pgd10']):.1%} under pgd10 to "
                + ", ".join(f"{accuracy(runs[spec]):.1%} under {spec}" for spec in raised))
    return result("more_iterations", flag, evidence)


def check_larger_eps(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float,
                     norm: str = "linf", seed: int = 0, floor: float = ITERATIONS_FLOOR,
                     retained: float = FLAT_RETAINED) -> CheckResult:
    """Robust accuracy goes up, or stays flat well above chance, when the budget ε grows.

    Every perturbation allowed at ε is allowed at 2ε and 4ε, so the true robust accuracy can
    only fall as ε grows, and at four times the threat model a working attack breaks most of
    what survived ε. If PGD finds fewer adversarial examples with a larger budget, or hardly
    more, the attack is failing for reasons other than the budget: its gradients mislead it or
    do not move it.

    Rule: PGD-20 (step ε/4) at ε, 2ε and 4ε. Rising: each larger budget is compared with each
    smaller one and flagged when the points only the smaller-budget attack broke outnumber the
    reverse by more than one sample, `floor` (1 percentage point) and 3·√(disagreements).
    Flat: flagged when more than `retained` (half) of the points robust at ε are still robust
    at 4ε while accuracy at 4ε exceeds chance by more than one sample and 3 binomial standard
    deviations. Honest models trained at ε keep under a tenth (a PGD-1 cnn-small on
    cifar10-mini: 22%, 9.5%, 1.5%, 7% kept); zero-gradient models keep over four fifths. Evaluating far below
    the ε a model was trained for can legitimately keep more than half: run it at the
    model's own ε.
    """
    budgets = (eps, 2 * eps, 4 * eps)
    with prepared(model, seed):
        correct = correctly_classified(model, images, labels)
        runs = [robust_under(model, "pgd20", images, labels, ThreatModel(radius, norm), seed, correct)
                for radius in budgets]
        chance = 1.0 / num_classes(model, images)
    pairs = {f"{i}eps_vs_{j}eps": compare(runs[a], runs[b], floor, noise=True)
             for (a, i), (b, j) in _ordered_pairs([1, 2, 4])}
    kept = int((runs[0] & runs[2]).sum()) / max(int(runs[0].sum()), 1)
    above_chance = accuracy(runs[2]) > chance + chance_allowance(chance, len(correct))
    evidence = {"n": len(correct), "eps": list(budgets), "accuracy": [accuracy(run) for run in runs],
                "pairs": pairs, "retained_at_4eps": kept, "retained_limit": retained,
                "chance": chance}
    raised = [key for key, pair in pairs.items() if pair["increase"]]
    curve = ", ".join(f"{a:.1%}" for a in evidence["accuracy"])
    flag = None
    if raised:
        flag = f"PGD-20 robust accuracy increases with ε ({curve} at ε×1,2,4; {', '.join(raised)})"
    elif kept > retained and above_chance:
        flag = (f"PGD-20 robust accuracy stays flat as ε grows ({curve} at ε×1,2,4; {kept:.0%} of "
                "the points robust at ε survive 4ε)")
    return result("larger_eps", flag, evidence)


def chance_allowance(chance: float, n: int) -> float:
    """How far above chance accuracy may lie by luck: one sample, and 3 binomial deviations."""
    return max(1.0 / max(n, 1), Z_NOISE * math.sqrt(chance * (1 - chance) / max(n, 1)))


def _ordered_pairs(values: Sequence[int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """((index, value), (index, value)) for every pair with the first one smaller."""
    indexed = list(enumerate(values))
    return [(a, b) for a in indexed for b in indexed if a[0] < b[0]]


def unbounded_radius(norm: str, images: Tensor) -> float:
    """A radius whose ball around any image contains the whole [0,1] image cube."""
    return get_norm(norm).cube_radius(images[0].numel())


def check_unbounded(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float | None = None,
                    norm: str = "linf", seed: int = 0, steps: int = 50) -> CheckResult:
    """PGD with an unlimited budget leaves more points correct than chance.

    With a radius that covers the whole image cube (L∞ 1, L2 √d) every image can be turned into
    any other, so no point of a classifier that predicts more than one class is robust, and a
    working attack drives accuracy to zero. Accuracy above chance means the attack cannot
    follow the model's gradients even where nothing limits it: the gradients are masked.

    Rule: PGD with `steps` (50) steps of a tenth of the radius, once from a random point of the
    ball and once from the clean image; flagged when either leaves accuracy above chance
    (1/classes) by more than one sample and 3 binomial standard deviations 3·√(p(1−p)/n) with
    p = 1/classes — what a model whose predictions ignore the label scores. The clean start
    matters: a random point of the unbounded ball is noise that alone fools most models, so a
    model with zero gradients passes from there but stays put from the clean image.
    """
    radius = unbounded_radius(norm, images)
    specs = {"random_start": f"pgd{steps}(step={radius / 10:.6g})",
             "clean_start": f"pgd{steps}(step={radius / 10:.6g},random_start=false)"}
    with prepared(model, seed):
        correct = correctly_classified(model, images, labels)
        runs = {start: accuracy(robust_under(model, spec, images, labels, ThreatModel(radius, norm),
                                             seed, correct))
                for start, spec in specs.items()}
        chance = 1.0 / num_classes(model, images)
    n = len(correct)
    allowed = chance_allowance(chance, n)
    evidence = {"attacks": specs, "radius": radius, "n": n, "accuracy": runs,
                "chance": chance, "allowed_above_chance": allowed}
    worst = max(runs, key=runs.get)
    flag = None
    if runs[worst] > chance + allowed:
        flag = (f"{runs[worst]:.1%} of points survive PGD at radius {radius:.3g} from the "
                f"{worst.replace('_', ' ')} (chance {chance:.1%}): the attack cannot follow the gradients")
    return result("unbounded", flag, evidence)


def check_gradient_quality(model: nn.Module, images: Tensor, labels: Tensor, *,
                           eps: float, norm: str = "linf", seed: int = 0,
                           alignment_floor: float = ALIGNMENT_FLOOR,
                           gain_floor: float = FGSM_GAIN_FLOOR, rate: float = SHATTERED_RATE) -> CheckResult:
    """Input gradients are noise: they change direction within the ε-ball or mispredict the loss.

    A gradient attack trusts ∇ₓL to point, over the step it takes, where the loss rises. Honest
    networks, standard or adversarially trained, have gradients that keep their direction
    within the ε-ball (GradAlign cosine between ∇ₓL(x) and ∇ₓL(x+η), η random in the ball) and
    whose first-order prediction ⟨∇ₓL, δ⟩ of the FGSM step's loss rise is met or exceeded.
    Shattered gradients (a high-frequency nonlinearity, non-differentiable operations with
    fake derivatives) are large and point nowhere: nearby gradients are uncorrelated and the
    loss rises far less than they predict, so PGD wanders while the model is not robust.

    Rule: over the points with a non-zero finite gradient (zero ones are the `gradients`
    check's), a point's gradient is noise-like when its cosine is below `alignment_floor` (0.1)
    or its ratio of the FGSM step's loss rise L(x+δ) − L(x) to ⟨∇ₓL(x), δ⟩ is below `gain_floor`
    (0.1, the gradient promises ten times what it delivers). Flagged when the count of such
    points is more than a model with `rate` (5%) of them shows at a false-alarm rate of 0.1%
    (one-sided binomial test), so masking on a part of the inputs (a third, say) is flagged once
    enough points are looked at. Honest cnn-smalls, standard and adversarially trained, measure
    median cosines of 0.57–0.92 and ratios of 0.42–0.94; shattered ones 0.004 and 0.001;
    independent directions in d dimensions have cosines of about 1/√d (0.02 on CIFAR-10).
    """
    with prepared(model, seed):
        clean = loss_and_grad(model, images, labels)
        noisy = loss_and_grad(model, images + random_delta(images, eps, norm, seed), labels)
        delta = clip_to_box(images, fgsm_direction(clean.grad, eps, norm))
        rise = loss_at(model, images + delta, labels) - clean.loss
    flat = clean.grad.flatten(1)
    usable = (torch.isfinite(flat).all(1) & (flat != 0).any(1)
              & torch.isfinite(noisy.grad.flatten(1)).all(1))
    predicted = per_sample_dot(clean.grad, delta)
    usable &= predicted > 0
    cosine = F.cosine_similarity(flat, noisy.grad.flatten(1), dim=1, eps=1e-30)[usable]
    gain = (rise / predicted.clamp_min(1e-30))[usable]
    misaligned, undelivered = cosine < alignment_floor, gain < gain_floor
    noise_like = int((misaligned | undelivered).sum())
    n_usable = int(usable.sum())
    evidence = {"n": len(images), "usable": n_usable, "alignment_floor": alignment_floor,
                "gain_floor": gain_floor, "rate": rate, "noise_like": noise_like,
                "misaligned": int(misaligned.sum()), "undelivered": int(undelivered.sum()),
                "flag_from": least_alarming(n_usable, rate),
                "median_alignment": float(cosine.median()) if len(cosine) else None,
                "median_fgsm_gain": float(gain.median()) if len(gain) else None}
    flag = None
    if exceeds_rate(noise_like, n_usable, rate):
        flag = (f"input gradients look shattered on {noise_like} of {n_usable} points "
                f"({int(misaligned.sum())} change direction within the ball, {int(undelivered.sum())} "
                "deliver under a tenth of the FGSM loss rise they predict)")
    return result("gradient_quality", flag, evidence)


def loss_dependence(cross_entropy_broke: int, margin_only_broke: int,
                    share: float = MARGIN_ONLY_SHARE) -> dict:
    """Whether a margin-loss attack run after a cross-entropy one broke markedly more than CE
    could: the evidence and, when so, a one-line flag. Rule of `check_loss_dependence`."""
    total = cross_entropy_broke + margin_only_broke
    flag = None
    if exceeds_rate(margin_only_broke, total, share):
        flag = (f"a margin loss broke {margin_only_broke} points that cross-entropy left standing, "
                f"against {cross_entropy_broke} cross-entropy broke: cross-entropy gradients vanish")
    return {"cross_entropy_broke": cross_entropy_broke, "margin_only_broke": margin_only_broke,
            "share": share, "flag_from": least_alarming(total, share), "flag": flag}


def check_loss_dependence(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float,
                          norm: str = "linf", seed: int = 0, share: float = MARGIN_ONLY_SHARE) -> CheckResult:
    """A margin loss breaks markedly more points than cross-entropy with the same budget.

    Cross-entropy's gradient vanishes when the softmax saturates or flattens: a model that
    divides its logits by a temperature that grows off the data lets a CE attack raise the loss
    by flattening the softmax instead of changing the class, so PGD on CE reports robustness
    that is not there. Margin losses (DLR, CW) do not depend on the logits' scale and are not
    fooled; when they break many points CE could not, CE-based numbers are not estimates.

    Rule: PGD-10 on cross-entropy, then PGD-10 on DLR (same step, same seed) on the points CE
    left standing. On an honest model the DLR run adds a few percent of the breaks; flagged when
    the points only DLR broke are more of all the breaks than a share of `share` (25%) explains
    at a false-alarm rate of 0.1% (one-sided binomial test). aa-fast applies the same rule to
    its own APGD-CE and targeted APGD-DLR stages.
    """
    threat = ThreatModel(eps, norm)
    with prepared(model, seed):
        correct = correctly_classified(model, images, labels)
        ce = robust_under(model, "pgd10", images, labels, threat, seed, correct)
        standing = ce.nonzero().flatten()
        dlr_robust = torch.zeros_like(ce)
        if len(standing):
            on = standing.to(images.device)
            dlr_robust[standing] = robust_under(model, "pgd10(loss=dlr)", images[on], labels[on], threat,
                                                seed, torch.ones(len(standing), dtype=torch.bool))
    verdict = loss_dependence(int((correct & ~ce).sum()), int((ce & ~dlr_robust).sum()), share)
    flag = verdict.pop("flag")
    evidence = {"n": len(correct), "correct": int(correct.sum()), **verdict,
                "cross_entropy_accuracy": accuracy(ce), "then_dlr_accuracy": accuracy(dlr_robust)}
    return result("loss_dependence", flag, evidence)


def check_black_box(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float,
                    norm: str = "linf", seed: int = 0, queries: int = 1000,
                    floor: float = BLACK_BOX_FLOOR) -> CheckResult:
    """A black-box attack (Square) breaks points that white-box PGD could not.

    Square Attack (Andriushchenko et al., 2020) uses only the model's outputs, never its
    gradients. On a differentiable model with useful gradients it is the weaker attack at a
    few hundred or thousand queries; if it breaks many points PGD-20 left robust, adversarial
    examples exist that the gradients do not lead to: the gradients are masked.

    Rule: PGD-20 runs on all points, Square with `queries` (1000) queries on the points PGD-20
    left robust (as AutoAttack orders them); flagged when Square breaks more than one sample and
    `floor` (5 percentage points) of all points. On honest small models PGD-20 misses a few
    percent that another search finds (2% on a cnn-small trained for 3 epochs); masking
    leaves tens of points.
    """
    threat, spec = ThreatModel(eps, norm), f"square(queries={queries})"
    with prepared(model, seed):
        correct = correctly_classified(model, images, labels)
        pgd = robust_under(model, "pgd20", images, labels, threat, seed, correct)
        survivors = pgd.nonzero().flatten()
        device_index = survivors.to(images.device)
        square = torch.zeros_like(pgd)
        if len(survivors):
            square[survivors] = robust_under(model, spec, images[device_index], labels[device_index],
                                             threat, seed, torch.ones(len(survivors), dtype=torch.bool))
    broken = (pgd & ~square).nonzero().flatten().tolist()
    allowed = max(1.0, floor * len(pgd))
    evidence = {"attack": spec, "n": len(pgd), "pgd20_accuracy": accuracy(pgd),
                "pgd20_then_square_accuracy": accuracy(square), "square_only_broke": len(broken),
                "square_only_indices": broken, "allowed": allowed}
    flag = None
    if len(broken) > allowed:
        flag = (f"Square broke {len(broken)} of {len(pgd)} points that PGD-20 could not "
                f"({accuracy(pgd):.1%} → {accuracy(square):.1%})")
    return result("black_box", flag, evidence)


# --- registry --------------------------------------------------------------------------------

CHECKS: dict[str, CheckFn] = {
    "determinism": check_determinism,
    "logits": check_logits,
    "gradients": check_gradients,
    "gradient_quality": check_gradient_quality,
    "loss_dependence": check_loss_dependence,
    "autoattack_checks": check_autoattack_checks,
    "fgsm_vs_pgd": check_fgsm_vs_pgd,
    "more_iterations": check_more_iterations,
    "larger_eps": check_larger_eps,
    "unbounded": check_unbounded,
    "black_box": check_black_box,
}
# A few forward/backward passes each (FGSM + PGD-10 for fgsm_vs_pgd): seconds on CPU for
# 200 CIFAR images of cnn-small. The others run tens of PGD steps or thousands of queries.
CHEAP_CHECKS: tuple[str, ...] = ("determinism", "logits", "gradients", "gradient_quality",
                                 "loss_dependence", "autoattack_checks", "fgsm_vs_pgd")


def masking_gate(model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel, seed: int,
                 stage_counts: tuple[int, int]) -> list[str]:
    """aa-fast's masking gate: the flags the cheap checks raise on these points, and the
    `loss_dependence` rule on the counts of its cross-entropy and DLR stages (empty: shut)."""
    flags = []
    if len(images):
        names = [name for name in CHEAP_CHECKS if name != "loss_dependence"]
        checks = run_checks(model, images, labels, eps=threat.eps, norm=threat.norm, seed=seed, names=names)
        flags = [f"{check.name}: {check.flag}" for check in checks if not check.passed]
    verdict = loss_dependence(*stage_counts)
    return flags + ([f"loss_dependence: {verdict['flag']}"] if verdict["flag"] else [])


def check_names(names: str | Sequence[str] | None = None) -> list[str]:
    """The checks a selection names: None or "cheap", "all", a comma-separated string or a list."""
    if names is None or names == "cheap":
        return list(CHEAP_CHECKS)
    if names == "all":
        return list(CHECKS)
    chosen = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = [name for name in chosen if name not in CHECKS]
    if unknown:
        raise RobevalError(f"unknown masking check {', '.join(map(repr, unknown))}; known: "
                           f"{', '.join(CHECKS)} (or 'cheap', 'all')")
    return chosen


def run_checks(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float, norm: str = "linf",
               seed: int = 0, names: str | Sequence[str] | None = None,
               options: dict[str, dict] | None = None) -> list[CheckResult]:
    """Run the selected checks (default: the cheap ones), in the order they are named.

    `options` maps a check name to extra keyword arguments, e.g. `{"black_box": {"queries": 500}}`;
    options of checks that are not selected are ignored, unknown check names are an error.
    """
    selected = check_names(names)
    options = options or {}
    check_names(list(options))
    return [CHECKS[name](model, images, labels, eps=eps, norm=norm, seed=seed, **options.get(name, {}))
            for name in selected]
